"""Real camera + LiDAR frames as network input: KITTI-layout roots (with or without poses), each
frame's image crop and projected LiDAR on the model's grid, and the leave-one-set-out folds.

Real pairs are few (``../shared/data/kitti``: drives 00, 01, 02, 08; ``../shared/data/kitti_extra``:
KITTI-360 ``k360`` and KITTI raw ``r0926``); every real number the project reports comes from a
fold no model trained on. The folds are fixed in ``config/real_folds.yaml`` before any training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AttnLinkError, ConfigError


@dataclass
class RealFrames:
    """Frames on the network grid: rgb (N, 3, h, w) RGB in [0, 1], depth (N, 1, h, w) sparse metres
    (0 = no return), and per frame its drive (sequence name), frame index and time."""

    rgb: np.ndarray
    depth: np.ndarray
    drive: np.ndarray
    frame: np.ndarray
    time: np.ndarray
    views: np.ndarray | None = None  # (N, K, 1, h, w): the scan's heading views (a map's places), when asked for

    def __len__(self) -> int:
        return len(self.drive)

    def subset(self, keep: np.ndarray) -> "RealFrames":
        return RealFrames(self.rgb[keep], self.depth[keep], self.drive[keep], self.frame[keep], self.time[keep],
                          None if self.views is None else self.views[keep])

    def of_drives(self, drives) -> "RealFrames":
        return self.subset(np.isin(self.drive, list(drives)))

    @property
    def drives(self) -> list[str]:
        return list(dict.fromkeys(self.drive.tolist()))


def real_drives(root: str | Path, sequences=None) -> list[str]:
    """Sequences of ``root`` holding both scans and images (all of them, or those asked for)."""
    seqs = Path(root) / "dataset" / "sequences"
    found = [d.name for d in sorted(seqs.iterdir()) if any((d / "velodyne").glob("*.bin")) and any((d / "image_2").glob("*.png"))] \
        if seqs.is_dir() else []
    if not found:
        raise AttnLinkError(f"{root}: no sequence with velodyne/*.bin and image_2/*.png under dataset/sequences")
    if sequences:
        missing = [s for s in sequences if s not in found]
        if len(missing) == len(sequences):
            raise AttnLinkError(f"{root}: none of the sequences {list(sequences)} (has {found})")
        found = [s for s in found if s in sequences]
    return found


def load_real_frames(roots, height: int, width: int, sequences=None, crop_top: int | None = None,
                     progress: bool = False, views: int = 0, stride: int = 1, fov_deg=None) -> RealFrames:
    """Every ``stride``-th frame of the drives of ``roots`` (each filtered by ``sequences`` where
    given) as network input on a ``height x width`` grid (the pipeline's own conversion); ``views``
    > 0: also the scan's heading views as a map holds them (retrieval/views.py). Any KITTI-layout
    root reads: real drives, synthetic towns. ``fov_deg``: a model's ``input_fov_deg`` (level grid)."""
    from ..data.kitti import KittiSequence
    from ..geometry.projection import model_grid
    from ..pipeline import Frame, network_inputs, view_depth_grids
    from ..retrieval.views import DEFAULT_REVERSE_OFFSET_M, view_offsets, view_yaws

    yaws = view_yaws(views) if views else []
    offsets = view_offsets(yaws, DEFAULT_REVERSE_OFFSET_M) if views else None

    items, dirs = [], {}
    for root in roots:
        for name in real_drives(root, sequences):
            seq = KittiSequence(root, name)
            if dirs.setdefault(name, seq.dir) != seq.dir:
                raise AttnLinkError(f"two roots hold a sequence named {name!r}: real drives must have distinct names")
            items += [(seq, i) for i in list(seq.available_frames())[::stride]]
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="real frames", unit="frame")
    rgb, depth, drive, frame, time, view_grids = [], [], [], [], [], []
    grids = {}
    for seq, i in items:
        img = seq.read_image(i)
        key = (seq.dir, img.shape)
        if key not in grids:
            grids[key] = model_grid(seq.calib, img.shape[1], img.shape[0], height, width, fov_deg, top=crop_top)
        pts = seq.read_scan(i)
        x = network_inputs(Frame(float(seq.times[i]), seq.calib, image=img, points=pts), grids[key], "fused")
        if views:
            view_grids.append(view_depth_grids(pts, seq.calib, grids[key], yaws, offsets))
        rgb.append(x["rgb"][0])
        depth.append(x["depth"][0])
        drive.append(seq.name)
        frame.append(int(i))
        time.append(float(seq.times[i]))
    return RealFrames(np.stack(rgb), np.stack(depth), np.asarray(drive), np.asarray(frame, np.int64), np.asarray(time),
                      np.stack(view_grids) if views else None)


@dataclass(frozen=True)
class RealFolds:
    """Leave-one-set-out folds: ``folds`` maps a fold's name to its drives; a fold's model trains
    on every other fold's frames and is measured on its own."""

    roots: tuple[str, ...]
    folds: dict

    @classmethod
    def load(cls, path: str | Path, base: str | Path | None = None) -> "RealFolds":
        import yaml

        data = yaml.safe_load(Path(path).read_text())
        try:
            roots = tuple(str(Path(base) / r) if base is not None and not Path(r).is_absolute() else str(r) for r in data["roots"])
            folds = {str(k): [str(s) for s in v] for k, v in data["folds"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: a folds file needs 'roots' (list) and 'folds' (name: [drives])") from exc
        seen = [d for v in folds.values() for d in v]
        if len(seen) != len(set(seen)):
            raise ConfigError(f"{path}: a drive sits in two folds")
        return cls(roots, folds)

    @property
    def drives(self) -> list[str]:
        return [d for v in self.folds.values() for d in v]

    def fold_of(self, drive: str) -> str:
        for k, v in self.folds.items():
            if drive in v:
                return k
        raise KeyError(drive)

    def train_drives(self, held_out: str) -> list[str]:
        if held_out not in self.folds:
            raise ConfigError(f"unknown fold {held_out!r} (folds: {', '.join(self.folds)})")
        return [d for k, v in self.folds.items() if k != held_out for d in v]
