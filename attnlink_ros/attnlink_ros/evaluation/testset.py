"""The model card's test set: towns named in a config marked "test: report only", evaluated in one
run, reported per town and as mean and worst town (``attnlink eval --test-set CONFIG``).

A town is a synthetic drive (seed, frames) under ``TOWNS/s<seed>``; missing ones are synthesised
first (``attnlink synth``'s renderer, deterministic per seed). Several ``--data`` roots give the
same table over those roots instead.

Per town and query mode the table holds revisit Recall@1 over all revisit queries and over the
same-heading ones (the map place was recorded driving the query's way), on a map of ``views``
heading views a place (the product's default map).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import load_yaml
from ..errors import ConfigError

TEST_PURPOSE = "test: report only"


@dataclass(frozen=True)
class Town:
    seed: int
    frames: int

    @property
    def name(self) -> str:
        return f"s{self.seed}"


@dataclass(frozen=True)
class TestSet:
    towns: tuple[Town, ...]
    validation: tuple[Town, ...] = ()
    views: int = 2
    modes: tuple[str, ...] = ("image", "lidar", "fused")
    protocol: str = "revisit"

    __test__ = False  # not a pytest class

    @classmethod
    def load(cls, path: str | Path) -> "TestSet":
        data = load_yaml(path)
        if not isinstance(data, dict) or data.get("purpose") != TEST_PURPOSE:
            raise ConfigError(f"{path}: not a test-set config (needs purpose: {TEST_PURPOSE!r})")

        def towns(key: str) -> tuple[Town, ...]:
            out = []
            for t in data.get(key) or []:
                if not isinstance(t, dict) or set(t) != {"seed", "frames"}:
                    raise ConfigError(f"{path}: every entry of {key} needs exactly seed and frames, got {t!r}")
                out.append(Town(int(t["seed"]), int(t["frames"])))
            return tuple(out)

        ts = cls(towns("towns"), towns("validation"), int(data.get("views", 2)), tuple(data.get("modes") or cls.modes),
                 str(data.get("protocol", "revisit")))
        if not ts.towns:
            raise ConfigError(f"{path}: no test towns")
        clash = {t.seed for t in ts.towns} & {t.seed for t in ts.validation}
        if clash:
            raise ConfigError(f"{path}: seeds {sorted(clash)} are both test and validation towns")
        if ts.protocol != "revisit":
            raise ConfigError(f"{path}: protocol {ts.protocol!r}: the test set reports the revisit protocol")
        return ts


def ensure_towns(towns, root: str | Path, workers: int = 2, progress: bool = True, echo=print) -> dict[str, Path]:
    """``{town name: KITTI-layout root}``, synthesising the towns not there yet (a ``done`` file
    marks a finished town; a half-written one is written again)."""
    from ..data.synth import SynthConfig, write_synthetic_sequence

    root = Path(root)
    out = {}
    for t in towns:
        d = root / t.name
        if not (d / "done").is_file():
            echo(f"synthesising town {t.name} ({t.frames} frames) into {d}")
            write_synthetic_sequence(d, SynthConfig(frames=t.frames, seed=t.seed), workers=workers, progress=progress)
            (d / "done").write_text(f"seed {t.seed} frames {t.frames}\n")
        out[t.name] = d
    return out


def town_row(result: dict, modes) -> dict:
    """One town's card row from ``evaluate_sequence``'s result: per mode Recall@1 over all
    revisit queries and over the same-heading ones, and the query counts."""
    r = result["revisit"]
    ceil = r.get("ceiling")
    # the same-heading ceiling: the share of revisit queries a one-view map can find at all;
    # reachable: the share this map's views can reach (docs/data.md)
    row = {"queries": int(r[modes[0]]["queries"]),
           "same_heading_queries": int(ceil["queries_by_heading"].get("same", 0)) if ceil else None,
           "same_heading_ceiling": round(float(ceil["same_heading"]), 4) if ceil else None,
           "reachable": round(float(ceil["views"]), 4) if ceil else None}
    for m in modes:
        row[m] = {"recall@1": round(float(r[m]["recall@1"]), 4),
                  "same_heading_recall@1": round(float(r[m]["by_heading"]["same"]["recall@1"]), 4)
                  if "same" in r[m].get("by_heading", {}) else None}
    return row


def summarise(rows: dict[str, dict], modes) -> dict:
    """Mean and worst town per mode and measure, and of the same-heading ceiling."""
    out = {}
    ceil = [r["same_heading_ceiling"] for r in rows.values() if r.get("same_heading_ceiling") is not None]
    if ceil:
        out["same_heading_ceiling"] = {"mean": round(float(np.mean(ceil)), 4), "worst": round(float(np.min(ceil)), 4)}
    for m in modes:
        for key in ("recall@1", "same_heading_recall@1"):
            vals = [r[m][key] for r in rows.values() if r[m][key] is not None]
            if vals:
                out.setdefault(m, {})[key] = {"mean": round(float(np.mean(vals)), 4), "worst": round(float(np.min(vals)), 4),
                                              "worst_town": min(rows, key=lambda n: rows[n][m][key] if rows[n][m][key] is not None else 9)}
    return out


def card_table(rows: dict[str, dict], summary: dict, modes) -> str:
    """The model card's table (markdown): a row per town, then mean and worst; each cell
    'same-heading / all' revisit Recall@1."""
    head = ("| town | queries (same heading) | same-heading ceiling | reachable | "
            + " | ".join(f"{m} R@1 same / all" for m in modes) + " |")
    lines = [head, "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in modes) + " |"]

    def num(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    def cell(v: dict) -> str:
        same = "-" if v.get("same_heading_recall@1") is None else f"{v['same_heading_recall@1']:.3f}"
        return f"{same} / {v['recall@1']:.3f}"

    for name, r in rows.items():
        lines.append(f"| {name} | {r['queries']} ({r['same_heading_queries']}) | {num(r.get('same_heading_ceiling'))} | "
                     f"{num(r.get('reachable'))} | " + " | ".join(cell(r[m]) for m in modes) + " |")
    for stat in ("mean", "worst"):
        cells = []
        for m in modes:
            s = summary.get(m, {})
            same = s.get("same_heading_recall@1", {}).get(stat)
            cells.append(f"**{'-' if same is None else f'{same:.3f}'}** / {s['recall@1'][stat]:.3f}")
        c = summary.get("same_heading_ceiling", {}).get(stat)
        lines.append(f"| **{stat}** | | {num(c)} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)
