"""GICP verification in a process of its own, so that a relocalising node keeps the sensor rate.

small_gicp holds Python's GIL while it registers (measured: a Python loop beside a GICP thread
ran at 6% of its speed), so a worker *thread* would stall the node's callbacks for the ~230 ms a
verification takes on 2 cores. :class:`VerifierProcess` runs :func:`~.loops.verify_hits` in a
child process (spawned: no copy of the parent's ROS or ONNX Runtime state) that holds its own copy
of the map's stored scans. One job at a time: ``offer`` refuses a job while one is running (the
caller answers that frame unverified at once), so results never queue up behind the sensor.
Results come back on a reader thread that calls ``on_result(context, hits, registrations, error)``.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Callable

import numpy as np

from .loops import LoopConfig, ScanStore


def _serve(conn, scans: ScanStore, cfg: LoopConfig) -> None:
    import signal

    from .loops import verify_hits

    # Ctrl-C in a terminal reaches the whole process group: the parent node ends this process
    # itself (close), so the child must not die mid-job with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job, hits, points = msg
        try:
            out, checked = verify_hits(hits, points, scans, cfg)
            conn.send((job, out, checked, None))
        except Exception as exc:  # noqa: BLE001 - one bad scan must not end the verifier
            conn.send((job, None, 0, f"{type(exc).__name__}: {exc}"))


class VerifierProcess:
    def __init__(self, scans: ScanStore, cfg: LoopConfig, on_result: Callable) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, scans, cfg), name="attnlink-verifier", daemon=True)
        self._proc.start()
        child.close()
        self._on_result = on_result
        self._lock = threading.Lock()
        self._pending: dict[int, object] = {}
        self._next = 0
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="attnlink-verifier-results", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def offer(self, context, hits: list[dict], points: np.ndarray) -> bool:
        """Starts verifying ``hits`` with the live scan ``points``; False (nothing started) while
        the previous job runs or when the process has died."""
        with self._lock:
            if self._pending or not self._proc.is_alive():
                return False
            job = self._next
            self._next += 1
            self._pending[job] = context
        try:
            self._conn.send((job, hits, np.ascontiguousarray(points[:, :3], dtype=np.float32)))
        except (OSError, ValueError):
            with self._lock:
                self._pending.pop(job, None)
            return False
        return True

    def _read(self) -> None:
        while True:
            try:
                job, hits, checked, error = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                context = self._pending.pop(job, None)
            if context is not None:
                self._on_result(context, hits, checked, error)
        # the process is gone: a job it took never comes back; hand it back unverified (unless closing)
        with self._lock:
            lost, self._pending = list(self._pending.values()), {}
        for context in [] if self._closed else lost:
            self._on_result(context, None, 0, "verifier process ended")

    def close(self, timeout: float = 5.0) -> None:
        """Stops the process (a running job is abandoned, not reported) and the reader thread."""
        self._closed = True
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout)
        self._reader.join(timeout)  # the child's end closed with it: the reader saw EOF
        self._conn.close()
