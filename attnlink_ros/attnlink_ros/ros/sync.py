"""Approximate time synchronisation of camera and LiDAR (message_filters is not installable here).

Newest-only, no backlog: each stream keeps only its latest unmatched message; a newer message of
the same stream replaces (and counts as dropped) an older one that found no partner. A pair is
emitted when an image and a cloud lie within ``slop`` seconds of each other. When a required
stream has fallen silent in message time, messages of the other stream pass alone (the node then
queries with the modality it has): silent means the other stream's stamps run more than
``timeout`` past the silent stream's newest stamp, and the other stream already sent a message
after it that found no partner (so a gap in both streams, as in a replay of every 20th frame or a
paused recording, is not a lost sensor). Message time, not arrival time, decides: a node that is
busy for longer than ``timeout`` (or a lockstep replay that waits for it) receives both streams
late but still in step and must keep pairing them. Arrival time (``silent``) is what the node's
diagnostics report as a lost sensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SyncStats:
    pairs: int = 0
    singles: int = 0
    dropped: dict = field(default_factory=lambda: {"image": 0, "points": 0})


STREAMS = ("image", "points")


class ApproximateSync:
    STREAMS = STREAMS

    def __init__(self, slop: float = 0.05, timeout: float = 1.0, streams: tuple[str, ...] = STREAMS) -> None:
        self.slop = slop
        self.timeout = timeout
        self.required = tuple(streams)  # one stream (an image-only or LiDAR-only node): every message is a frame
        self.pending: dict[str, tuple[float, Any] | None] = {s: None for s in self.STREAMS}
        self.last_seen: dict[str, float | None] = {s: None for s in self.STREAMS}
        self.stats = SyncStats()
        self.started: float | None = None  # arrival time of the first message of any stream
        self.last_stamp: dict[str, float | None] = {s: None for s in self.STREAMS}
        self.prev_stamp: dict[str, float | None] = {s: None for s in self.STREAMS}  # the one before last
        self.first_stamp: float | None = None  # stamp of the first message of any stream

    def silent(self, stream: str, now: float) -> bool:
        """Silent: nothing for ``timeout`` s (a stream never seen gets ``timeout`` s from the first
        message of the other, so that start-up does not count as a lost sensor)."""
        seen = self.last_seen[stream]
        if seen is None:
            return self.started is None or now - self.started > self.timeout
        return now - seen > self.timeout

    def behind(self, stream: str, stamp: float) -> bool:
        """True when ``stream`` has fallen silent in message time as seen from the other stream's
        newest message (``stamp``): nothing from it for ``timeout`` s before ``stamp``, and the other
        stream's previous message already came after its last one (a stream never seen: ``timeout``
        s after the first message of any stream)."""
        last = self.last_stamp[stream]
        if last is None:
            return stamp - self.first_stamp > self.timeout
        other = "points" if stream == "image" else "image"
        prev = self.prev_stamp[other]
        return stamp - last > self.timeout and prev is not None and prev > last + self.slop

    def add(self, stream: str, stamp: float, msg: Any, now: float | None = None) -> dict | None:
        """Feeds one message; returns ``{"image": (stamp, msg) | None, "points": ...}`` when a frame
        is complete (a pair, or a single while the other stream is silent), else None."""
        if stream not in self.STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        now = stamp if now is None else now
        if self.started is None:
            self.started = now
        self.last_seen[stream] = now
        if self.first_stamp is None:
            self.first_stamp = stamp
        if self.last_stamp[stream] is None or stamp > self.last_stamp[stream]:
            self.prev_stamp[stream], self.last_stamp[stream] = self.last_stamp[stream], stamp
        other = "points" if stream == "image" else "image"
        if other not in self.required:
            self.stats.singles += 1
            return {stream: (stamp, msg), other: None}
        if self.pending[stream] is not None:
            self.stats.dropped[stream] += 1  # superseded before it found a partner
        self.pending[stream] = (stamp, msg)
        partner = self.pending[other]
        if partner is not None and abs(partner[0] - stamp) <= self.slop:
            frame = {stream: self.pending[stream], other: partner}
            self.pending = {s: None for s in self.STREAMS}
            self.stats.pairs += 1
            return frame
        if partner is not None and partner[0] < stamp - self.slop:
            # the partner is too old to ever match: it is stale
            self.stats.dropped[other] += 1
            self.pending[other] = None
        if self.behind(other, stamp):
            frame = {stream: self.pending[stream], other: None}
            self.pending[stream] = None
            self.stats.singles += 1
            return frame
        return None
