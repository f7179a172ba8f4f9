"""The place map: LiDAR place descriptors in a FAISS index plus the table of places.

On disk (DESIGN.md 4.1), a directory:

    manifest.json   format version (2), descriptor dimension, metric, index type, storage,
                    model fingerprint, counts (places, views per place, vectors), the views'
                    yaws, creation time, and the sha256 of every other file (``files``)
    index.faiss     the FAISS index (FAISS's own binary format, no pickle) over places x views
                    vectors, place-major: vector ``j`` is view ``j % K`` of place ``j // K``
    places.npz      poses (N, 4, 4), stamps (N,), sequence (N,) str, frame (N,) int64, xy (N, 2)
                    (loaded with allow_pickle=False)
    scans.npz       optional (``build-map --scans``; manifest ``scan_voxel_m``): each place's LiDAR
                    scan downsampled (retrieval.loops.ScanStore), for GICP verification of
                    relocalisation and a metric pose of the vehicle

Written to a temporary directory and renamed, so a crash never leaves half a map. The metric is
inner product on L2-normalised descriptors (= cosine similarity; higher is better).

Every file's sha256 is checked against the manifest before the file is parsed: ``faiss.read_index``
trusts its input (reading an index from an untrusted file is a memory-corruption risk, faiss
#5400), so a map that was altered after it was written is refused before FAISS sees a byte.
Format 1 maps (no checksums, one view) are refused with one line: rebuild them.

A place may be held as K heading views (retrieval/views.py): search answers places, each at its
best view, with the view's yaw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

FORMAT_VERSION = 2
METRIC = "inner_product"
INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")


@dataclass
class PlaceTable:
    poses: np.ndarray  # (N, 4, 4) float64 camera-0 -> world (KITTI convention)
    stamps: np.ndarray  # (N,) float64 seconds
    sequence: np.ndarray  # (N,) str
    frame: np.ndarray  # (N,) int64
    xy: np.ndarray  # (N, 2) float64 ground-plane position

    def __len__(self) -> int:
        return len(self.frame)

    def __post_init__(self) -> None:
        n = len(self.frame)
        for name in ("poses", "stamps", "sequence", "xy"):
            if len(getattr(self, name)) != n:
                raise DataError(None, f"place table: {name} has {len(getattr(self, name))} rows, frame has {n}")


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def make_index(descriptors: np.ndarray, index_type: str = "flat", storage: str = "fp16", nlist: int | None = None,
               pq_m: int = 32, hnsw_m: int = 32):
    """A FAISS inner-product index over ``descriptors`` (N, D).

    ``flat``: exact search (storage fp16: ScalarQuantizer fp16, fp32: IndexFlatIP);
    ``ivf``: inverted lists over fp16 vectors (for maps beyond ~100k places; trained here);
    ``ivfpq``: IVF with 32-byte product codes, re-ranked exactly (IndexRefineFlat) for recall;
    ``hnsw``: HNSW graph over fp16 (or fp32) vectors.
    """
    import faiss

    x = _as_f32(descriptors)
    n, d = x.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        index = faiss.IndexFlatIP(d) if storage == "fp32" else faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip)
    elif index_type in ("ivf", "ivfpq"):
        nlist = nlist or max(1, min(4096, int(4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(d)
        if index_type == "ivf":
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, ip)
        else:
            ivf = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, ip)
        sample = min(n, 32 * nlist, 131072)  # k-means on a sample keeps a 1M-place build to minutes
        ivf.train(x if sample == n else x[np.random.default_rng(0).choice(n, sample, replace=False)])
        ivf.nprobe = max(1, min(nlist, 32))
        ivf.own_fields = True
        quantizer.this.disown()
        index = ivf
        if index_type == "ivfpq":
            index = faiss.IndexRefineFlat(ivf)
            index.k_factor = 8
            ivf.this.disown()
            index.own_fields = True
    elif index_type == "hnsw":
        # HNSW is built on L2 (its graph heuristics assume it; with inner product it found the
        # exact top-1 for only 17% of queries at 100k places here); for unit vectors the L2
        # order is the inner-product order, and search() converts back to cosine scores
        l2 = faiss.METRIC_L2
        index = faiss.IndexHNSWFlat(d, hnsw_m, l2) if storage == "fp32" else faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, hnsw_m, l2)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
        if storage != "fp32":
            index.train(x)
    else:
        raise ValueError(f"unknown index type {index_type!r} (choose from {', '.join(INDEX_TYPES)})")
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return index


def faiss_metric_l2() -> int:
    import faiss

    return faiss.METRIC_L2


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class PlaceMap:
    def __init__(self, index, table: PlaceTable, manifest: dict, scans=None) -> None:
        self.index = index
        self.table = table
        self.manifest = manifest
        self.scans = scans  # retrieval.loops.ScanStore of the places, or None
        self.view_yaws = np.asarray(manifest.get("view_yaws_deg", [0.0]), dtype=np.float64)  # (K,)
        self.view_offsets = np.asarray(manifest.get("view_offsets_m", np.zeros((len(self.view_yaws), 2))), dtype=np.float64)  # (K, 2)

    def attach_scans(self, scans) -> None:
        """Stores each place's downsampled scan with the map (one per place, in place order)."""
        if len(scans) != len(self):
            raise ValueError(f"{len(scans)} scans for {len(self)} places")
        self.scans = scans
        self.manifest["scan_voxel_m"] = float(scans.voxel)

    @property
    def dim(self) -> int:
        return int(self.manifest["descriptor_dim"])

    @property
    def poses_known(self) -> np.ndarray:
        """(N,) bool: places whose pose the map holds (all, for maps built from a sequence)."""
        if getattr(self, "_known", None) is None or len(self._known) != len(self.table):
            self._known = np.isfinite(self.table.poses).all(axis=(1, 2))
        return self._known

    @property
    def views(self) -> int:
        """Views per place (K)."""
        return len(self.view_yaws)

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def build(cls, descriptors: np.ndarray, table: PlaceTable, model_fingerprint: str, index_type: str = "flat",
              storage: str = "fp16", extra: dict | None = None, view_yaws_deg=None, view_offsets_m=None) -> "PlaceMap":
        """A map of ``descriptors`` (N, D), or (N, K, D) for K heading views per place taken at
        ``view_yaws_deg`` (K,) degrees (default: retrieval.views.view_yaws(K)) from
        ``view_offsets_m`` (K, 2) (x, y in the place's LiDAR frame; default all at the scan)."""
        from .views import view_yaws

        descriptors = _as_f32(descriptors)
        if descriptors.ndim == 2:
            descriptors = descriptors[:, None, :]
        if descriptors.ndim != 3 or len(descriptors) != len(table):
            raise ValueError(f"descriptors {descriptors.shape} do not match {len(table)} places")
        n, k, d = descriptors.shape
        yaws = view_yaws(k) if view_yaws_deg is None else np.asarray(view_yaws_deg, dtype=np.float64)
        if len(yaws) != k:
            raise ValueError(f"{len(yaws)} view yaws for {k} views a place")
        offsets = np.zeros((k, 2)) if view_offsets_m is None else np.asarray(view_offsets_m, dtype=np.float64).reshape(k, 2)
        index = make_index(descriptors.reshape(n * k, d), index_type, storage)
        manifest = {
            "format_version": FORMAT_VERSION, "descriptor_dim": int(d), "metric": METRIC,
            "index_type": index_type, "storage": storage, "model_fingerprint": model_fingerprint,
            "places": len(table), "views": int(k), "vectors": int(n * k), "view_yaws_deg": [float(y) for y in yaws],
            "view_offsets_m": offsets.tolist(),
            "sequences": sorted(set(map(str, table.sequence))),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}),
        }
        return cls(index, table, manifest)

    def to_gpu(self) -> str:
        """Moves the index to the first GPU through faiss-gpu where present; returns what happened
        (the CPU index stays when faiss has no GPU support, no GPU is visible, or the index type
        has no GPU version)."""
        import faiss

        if not hasattr(faiss, "StandardGpuResources"):
            return "cpu: this faiss build has no GPU support (faiss-cpu)"
        if faiss.get_num_gpus() == 0:
            return "cpu: no GPU visible to faiss"
        try:
            self._gpu_resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
        except RuntimeError as exc:
            return f"cpu: {self.manifest.get('index_type')} index has no GPU version ({str(exc).splitlines()[0][:60]})"
        return "gpu 0"

    def search_views(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores (B, k), place indices (B, k), view indices (B, k)), best first, each place once
        (at its best view); -1 (score -inf) where the map has fewer than k places."""
        q = _as_f32(queries)
        if q.ndim == 1:
            q = q[None]
        if q.shape[1] != self.dim:
            raise DataError(None, f"query descriptor dimension {q.shape[1]} does not match the map's {self.dim}")
        K, k = self.views, int(k)
        # k places need at most k * K vectors (each place holds K of them)
        scores, idx = self.index.search(q, min(k * K, int(self.index.ntotal)) if K > 1 else k)
        if self.index.metric_type == faiss_metric_l2():
            scores = 1.0 - scores / 2.0  # squared L2 between unit vectors = 2 - 2 cos
        if K == 1:
            return scores, idx, np.where(idx >= 0, 0, -1)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        out_v = np.full((len(q), k), -1, np.int64)
        for b in range(len(q)):
            seen: set = set()
            r = 0
            for s, j in zip(scores[b], idx[b]):
                if j < 0 or r == k:
                    break
                place = int(j) // K
                if place in seen:
                    continue
                seen.add(place)
                out_s[b, r], out_i[b, r], out_v[b, r] = s, place, int(j) % K
                r += 1
        return out_s, out_i, out_v

    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, k), place indices (B, k)), best first; -1 where the map has fewer than k places."""
        scores, idx, _ = self.search_views(queries, k)
        return scores, idx

    def hits(self, queries: np.ndarray, k: int = 5) -> list[list[dict]]:
        """Per query, the top-k places as dicts (index, sequence, frame, stamp, pose, score, and the
        best view: ``view``, ``view_yaw_deg`` and ``view_offset_m`` (x, y)). ``pose`` is None for a
        place whose pose the map does not know (a map saved from a drive without poses)."""
        scores, idx, view = self.search_views(queries, k)
        t = self.table
        known = self.poses_known
        return [[{"index": int(i), "sequence": str(t.sequence[i]), "frame": int(t.frame[i]), "stamp": float(t.stamps[i]),
                  "pose": t.poses[i].tolist() if known[i] else None, "score": float(s), "view": int(v), "view_yaw_deg": float(self.view_yaws[v]),
                  "view_offset_m": self.view_offsets[v].tolist()}
                 for s, i, v in zip(srow, irow, vrow) if i >= 0]
                for srow, irow, vrow in zip(scores, idx, view)]

    # -- files ---------------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        """Writes the map directory atomically (temporary sibling, then rename), every file's
        sha256 in the manifest."""
        import faiss

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            t = self.table
            np.savez(tmp / "places.npz", poses=t.poses.astype(np.float64), stamps=t.stamps.astype(np.float64),
                     sequence=np.asarray(t.sequence).astype(str), frame=t.frame.astype(np.int64), xy=t.xy.astype(np.float64))
            if self.scans is not None:
                self.scans.save(tmp / "scans.npz")
            self.manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @staticmethod
    def _checked(path: Path, manifest: dict, name: str, what: str) -> Path:
        """``path / name`` after its sha256 matched the manifest's (before anything parses it)."""
        f = path / name
        want = (manifest.get("files") or {}).get(name)
        if want is None:
            raise DataError(path / "manifest.json", f"the manifest has no checksum for {name}")
        if not f.is_file():
            raise DataError(f, f"{what} not found")
        if sha256_file(f) != want:
            raise DataError(f, f"{what} does not match its sha256 in the manifest (altered or truncated): rebuild the map")
        return f

    @classmethod
    def load(cls, path: str | Path, model_fingerprint: str | None = None, descriptor_dim: int | None = None) -> "PlaceMap":
        """Opens a map directory, refusing (DataError, one clear line) a wrong format version,
        metric, dimension or model fingerprint, a file whose sha256 differs from the manifest's
        (checked before the file is parsed), and inconsistent counts."""
        import faiss

        path = Path(path)
        man_path = path / "manifest.json"
        try:
            manifest = json.loads(man_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(path, "not a place map (no manifest.json)" + (": a file, not a map directory" if path.is_file() else "")) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(man_path, f"manifest is not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(manifest, dict):
            raise DataError(man_path, "manifest is not a JSON object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(man_path, f"map format version {version} is not {FORMAT_VERSION} (checksummed, heading views): "
                                      "rebuild the map with `attnlink build-map`")
        if manifest.get("metric") != METRIC:
            raise DataError(man_path, f"map metric {manifest.get('metric')!r} is not {METRIC!r}")
        if descriptor_dim is not None and manifest.get("descriptor_dim") != descriptor_dim:
            raise DataError(man_path, f"map descriptors are {manifest.get('descriptor_dim')}-D, the model's are {descriptor_dim}-D")
        if model_fingerprint is not None and manifest.get("model_fingerprint") != model_fingerprint:
            raise DataError(man_path, f"map was built with model {str(manifest.get('model_fingerprint'))[:12]}, "
                                      f"the loaded model is {model_fingerprint[:12]}: rebuild the map with this model")
        n, views = manifest.get("places"), manifest.get("views")
        yaws = manifest.get("view_yaws_deg")
        offs = manifest.get("view_offsets_m")
        if (not isinstance(views, int) or views < 1 or not isinstance(yaws, list) or len(yaws) != views
                or not isinstance(offs, list) or np.asarray(offs).shape != (views, 2)):
            raise DataError(man_path, f"manifest views {views!r}, view_yaws_deg {yaws!r} and view_offsets_m {offs!r} disagree")
        index_file = cls._checked(path, manifest, "index.faiss", "index")
        table_file = cls._checked(path, manifest, "places.npz", "place table")
        try:
            index = faiss.read_index(str(index_file))
        except RuntimeError as exc:
            raise DataError(index_file, f"index unreadable: truncated or corrupt ({str(exc).splitlines()[0][:80]})") from None
        try:
            with np.load(table_file, allow_pickle=False) as z:
                table = PlaceTable(z["poses"], z["stamps"], z["sequence"], z["frame"], z["xy"])
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(table_file, f"place table unreadable: truncated or corrupt ({exc})") from None
        if index.d != manifest.get("descriptor_dim"):
            raise DataError(index_file, f"index is {index.d}-D, manifest says {manifest.get('descriptor_dim')}")
        if not isinstance(n, int) or index.ntotal != n * views or len(table) != n:
            raise DataError(path, f"manifest counts {n} places x {views} views, index holds {index.ntotal} vectors, table {len(table)} places")
        scans = None
        if manifest.get("scan_voxel_m") is not None:
            from .loops import ScanStore

            scans = ScanStore.load(cls._checked(path, manifest, "scans.npz", "stored scans"))
            if len(scans) != n:
                raise DataError(path / "scans.npz", f"{len(scans)} stored scans for {n} places")
        return cls(index, table, manifest, scans)
