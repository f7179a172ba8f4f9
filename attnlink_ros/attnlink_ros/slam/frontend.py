"""The loop half of ``attnlink slam``'s front end, scan by scan as the drive comes: the scan's
LiDAR descriptor (ONNX Runtime, one thread), a keyframe's heading views, the search over the
drive's own keyframes and GICP verification (retrieval/loops.py :class:`LoopDetector`).

It runs in the caller's process (:class:`LoopFrontEnd`) or in a process of its own
(:class:`LoopWorker`, spawned, as the node's verifier: small_gicp and the encoder hold the GIL),
so that on 2 cores the odometry keeps one core and the loops take the other. Both take jobs in
order and answer them in order; the pose graph takes the answer to scan j at a fixed lag behind
the odometry (slam/pipeline.py), so a run finds the same loops either way, however fast each
side is.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..retrieval.loops import Loop, LoopConfig, LoopDetector, LoopPrior


@dataclass(frozen=True)
class FrontSpec:
    """What a front end needs to start (picklable: it crosses to the worker process)."""

    model_path: str | None  # None: the shipped model
    root: str  # KITTI-layout root the worker reads scans from (the caller passes points in-process)
    sequence: str
    loop_cfg: LoopConfig
    views: int = 4
    reverse_offset_m: float | None = None


class LoopFrontEnd:
    """Descriptors and loops of one drive, in this process."""

    def __init__(self, spec: FrontSpec, calib) -> None:
        from ..pipeline import PlaceRecognizer

        self.rec = PlaceRecognizer(spec.model_path, backend="onnxruntime", backend_options={"threads": 1})
        self.calib = calib
        self.det = LoopDetector(self.rec.cfg.descriptor_dim, spec.loop_cfg, views=spec.views, reverse_offset_m=spec.reverse_offset_m)
        self.seconds = {"descriptors": 0.0, "loops": 0.0}
        self._answers: deque = deque()

    def step(self, frame: int, stamp: float, points: np.ndarray, prior: LoopPrior | None) -> Loop:
        """Queries the drive's keyframes with this scan, then keeps it as a keyframe when one is due."""
        from ..pipeline import Frame

        t0 = time.perf_counter()
        desc = self.rec.encode(Frame(stamp, self.calib, None, points), "lidar").descriptor
        m = self.det.map
        key = self.rec.encode_views(points, self.calib, m.view_yaws, offsets=m.view_offsets) if m.due(stamp) else None
        t1 = time.perf_counter()
        loop = self.det.step(stamp, desc, points, frame=frame, key_desc=key, prior=prior)
        self.seconds["descriptors"] += t1 - t0
        self.seconds["loops"] += time.perf_counter() - t1
        return loop

    # the same queue interface as LoopWorker: answers in the order asked
    def submit(self, job: int, frame: int, stamp: float, points: np.ndarray, prior: LoopPrior | None) -> None:
        self._answers.append((job, self.step(frame, stamp, points, prior)))

    def result(self, timeout: float | None = None) -> tuple[int, Loop]:
        return self._answers.popleft()

    @property
    def keyframes(self) -> list:
        return self.det.map.frames

    def close(self) -> dict:
        """The seconds spent, by stage; the keyframes' frames."""
        return {"seconds": dict(self.seconds), "keyframes": list(self.det.map.frames)}


def _serve(conn, spec: FrontSpec) -> None:
    import signal

    from ..data.kitti import KittiSequence

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends this process (close), not a Ctrl-C
    try:
        seq = KittiSequence(spec.root, spec.sequence)
        fe = LoopFrontEnd(spec, seq.calib)
        conn.send(("ready", None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    read = 0.0
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            conn.send(("closed", {"seconds": {"read": read, **fe.seconds}, "keyframes": list(fe.det.map.frames)}))
            return
        job, frame, stamp, prior = msg
        try:
            t = time.perf_counter()
            points = seq.read_scan(frame)
            read += time.perf_counter() - t
            conn.send(("loop", (job, fe.step(frame, stamp, points, prior))))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"scan {frame}: {type(exc).__name__}: {exc}"))
            return


class LoopWorker:
    """:class:`LoopFrontEnd` in a spawned process that reads the drive's scans itself (a scan does
    not cross the pipe: 1.5 MB). Jobs queue in the pipe; ``result`` blocks for the oldest answer."""

    def __init__(self, spec: FrontSpec, start_timeout: float = 120.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, spec), name="attnlink-slam-loops", daemon=True)
        self._proc.start()
        child.close()
        self._closed: dict | None = None
        kind, payload = self._recv(start_timeout)
        if kind != "ready":
            self.close()
            raise RuntimeError(f"loop worker did not start: {payload}")

    def _recv(self, timeout: float | None):
        if not self._conn.poll(timeout):
            raise RuntimeError(f"loop worker: no answer within {timeout} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("loop worker ended unexpectedly") from None

    def submit(self, job: int, frame: int, stamp: float, points: np.ndarray | None, prior: LoopPrior | None) -> None:
        self._conn.send((job, int(frame), float(stamp), prior))

    def result(self, timeout: float | None = 600.0) -> tuple[int, Loop]:
        kind, payload = self._recv(timeout)
        if kind != "loop":
            raise RuntimeError(f"loop worker failed: {payload}")
        return payload

    def close(self, timeout: float = 10.0) -> dict:
        """Ends the process; its seconds by stage and keyframes (empty when it had failed)."""
        if self._closed is None:
            self._closed = {"seconds": {}, "keyframes": []}
            try:
                self._conn.send(None)
                while self._conn.poll(timeout):
                    kind, payload = self._conn.recv()
                    if kind == "closed":
                        self._closed = payload
                        break
            except (EOFError, OSError, ValueError):
                pass
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
            self._conn.close()
        return self._closed
