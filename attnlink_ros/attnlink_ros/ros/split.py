"""The split deployment: the encoder beside the sensors, the map elsewhere.

  ``attnlink_frontend``   :class:`FrontEndNode`: sensors -> encoder -> ``~/descriptor``
  ``attnlink_retrieval``  :class:`RetrievalNode`: ``descriptor`` -> map search -> outputs

The descriptor travels as ``attnlink_msgs/Descriptor`` (header = the query's sensor header, the
query mode, the model's fingerprint, the float32 values); the retrieval node drops (and counts)
descriptors of another model than its map's, or of another dimension.
"""

from __future__ import annotations

import time

from attnlink_msgs.msg import Descriptor

from ..config import NODE_PARAM_DOCS
from ..errors import AttnLinkError
from ..pipeline import Frame, PlaceRecognizer
from .conversions import MessageError
from .frontend import SensorFrontEnd
from .conversions import stamp_to_sec
from .lifecycle import AttnLinkLifecycle, SensorNodeMixin
from .messages import descriptor_msg, parse_descriptor
from .outputs import Outputs

MODES = NODE_PARAM_DOCS["mode"][1]


class FrontEndNode(SensorNodeMixin, AttnLinkLifecycle):
    """Split deployment, sensor side: front end + encoder -> ``~/descriptor``."""

    SUBJECT = "descriptor front end"

    def __init__(self, node_name: str = "attnlink_frontend", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.front: SensorFrontEnd | None = None
        self._pub_desc = None
        self._autostart()

    def _configure(self) -> None:
        c = self.cfg
        self.front = SensorFrontEnd(c, self.counters, self._bad)
        self.front.stage_ms = self.stage_ms  # conversion times beside the pipeline's, in /diagnostics
        self.recognizer = PlaceRecognizer(c.model or None, None, backend=c.backend, crop_top=None if c.crop_top < 0 else c.crop_top,
                                          image_domain=c.image_domain)
        self._warm_up()
        self._pub_desc = self.create_lifecycle_publisher(Descriptor, "~/descriptor", 10)

    def _subscribe(self, qos):
        return self._sensor_subscriptions(qos)

    def _process(self, frame: Frame, header) -> None:
        t0 = time.perf_counter()
        try:
            mode = self._mode_for(frame)
            res = self.recognizer.encode(frame, mode)
        except (AttnLinkError, ValueError) as exc:
            self._bad("encode", str(exc))
            return
        self._pub_desc.publish(descriptor_msg(res.descriptor, header, res.mode, self.recognizer.fingerprint))
        self._processed(t0)


class RetrievalNode(AttnLinkLifecycle):
    """Split deployment, map side: ``descriptor`` -> search -> outputs."""

    SUBJECT = "retrieval"

    def __init__(self, node_name: str = "attnlink_retrieval", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.outputs: Outputs | None = None
        self._autostart()

    def _configure(self) -> None:
        c = self.cfg
        self.recognizer = PlaceRecognizer(c.model or None, c.map or None, backend=c.backend)
        if self.recognizer.map is None:
            raise AttnLinkError("parameter 'map' is empty: build one with `attnlink build-map`")
        self._map_model = str(self.recognizer.map.manifest.get("model_fingerprint", ""))
        self._configure_tracking()  # no odometry here: the filter moves by the map's geometry
        self.outputs = Outputs(self, c, self._map_model)

    def _subscribe(self, qos):
        return [self.create_subscription(Descriptor, "descriptor", self._on_descriptor, 10)]

    def _activated(self) -> None:
        t = self.recognizer.map.table
        self.outputs.map_markers(t.xy, t.poses[:, 2, 3])

    def _on_descriptor(self, msg: Descriptor) -> None:
        t0 = time.perf_counter()
        try:
            desc, mode, model = parse_descriptor(msg, MODES)
            if model != self._map_model:
                raise MessageError("descriptor_model", f"descriptor of model {model[:12]}, the map is of model {self._map_model[:12]}")
            if desc.shape[0] != self.recognizer.map.dim:
                raise MessageError("descriptor_dim", f"descriptor has {desc.shape[0]} values, the map {self.recognizer.map.dim}")
        except MessageError as exc:
            self._bad(exc.kind, str(exc))
            return
        k = max(self.cfg.k, self.tracking.cfg.k) if self.tracking is not None else self.cfg.k
        hits = self.recognizer.map.hits(desc[None], k)[0]
        with self._out_lock:
            fix, tracked = self._track(stamp_to_sec(msg.header.stamp), hits, mode)
            self.outputs.publish(msg.header, hits[: self.cfg.k], mode, self.counters, tracked=tracked, fix=fix)
        self._processed(t0)

