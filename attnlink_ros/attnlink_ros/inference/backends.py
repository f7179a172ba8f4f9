"""One inference interface, three backends: PyTorch, ONNX Runtime, TensorRT.

``make_backend("auto", ...)`` tries what is present and picks the fastest, logging which and why
the others were not used. Every backend takes numpy inputs of the model's size (rgb (B, 3, h, w)
float32 in [0, 1], depth (B, 1, h, w) float32 metres) and returns (B, D) float32 descriptors.
``image_domain`` ("auto", "camera", "render"; model/mixture.py) fixes which pseudo-LiDAR network
an image query runs; it does not touch the LiDAR and fused graphs.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ..errors import AttnLinkError
from ..model.attnlink import DescriptorOnly
from ..model.io import load_model
from .export import INPUTS, export_onnx, onnx_path

log = logging.getLogger("attnlink.inference")
BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")


class BackendUnavailable(AttnLinkError):
    """A backend cannot run here (no GPU, library missing); the message says which."""


class Backend(ABC):
    name: str = "?"

    def __init__(self, mode: str, descriptor_dim: int, input_hw: tuple[int, int]) -> None:
        self.mode = mode
        self.descriptor_dim = descriptor_dim
        self.input_hw = input_hw

    def _inputs(self, rgb, depth) -> list[np.ndarray]:
        given = {"rgb": rgb, "depth": depth}
        out = []
        for n in INPUTS[self.mode]:
            a = given[n]
            if a is None:
                raise ValueError(f"mode {self.mode!r} needs {n}")
            a = np.ascontiguousarray(a, dtype=np.float32)
            ch = 3 if n == "rgb" else 1
            if a.ndim != 4 or a.shape[1] != ch or a.shape[2:] != self.input_hw:
                raise ValueError(f"{n} must be (B, {ch}, {self.input_hw[0]}, {self.input_hw[1]}), got {a.shape}")
            out.append(a)
        return out

    @abstractmethod
    def encode(self, rgb: np.ndarray | None = None, depth: np.ndarray | None = None) -> np.ndarray:
        """(B, D) float32 L2-normalised descriptors."""

    def describe(self) -> str:
        return self.name


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model_path, mode: str, device: str | None = None, fp16: bool = False, cuda_graph: bool = False,
                 image_domain: str = "auto") -> None:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, self.meta = _load(model_path, mode, image_domain, dev)
        super().__init__(mode, model.cfg.descriptor_dim, (model.cfg.input_height, model.cfg.input_width))
        self.device = dev
        self.fp16 = fp16 and dev.type == "cuda"
        self.cuda_graph = cuda_graph and dev.type == "cuda"  # one captured graph per batch size: no launch gaps
        self.net = DescriptorOnly(model, mode).eval()
        if self.fp16:
            self.net.half()
        self._graphs: dict[int, tuple] = {}

    def _graph_for(self, xs: list) -> tuple:
        """(graph, static inputs, static output) for this batch size, captured on first use."""
        n = xs[0].shape[0]
        if n not in self._graphs:
            static = [x.clone() for x in xs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up on a side stream, as capture requires
                    self.net(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.net(*static)
            self._graphs[n] = (graph, static, out)
        return self._graphs[n]

    @torch.inference_mode()
    def encode(self, rgb=None, depth=None) -> np.ndarray:
        dtype = torch.float16 if self.fp16 else torch.float32
        xs = [torch.from_numpy(a).to(self.device, dtype, non_blocking=True) for a in self._inputs(rgb, depth)]
        if not self.cuda_graph:
            return self.net(*xs).float().cpu().numpy()
        graph, static, out = self._graph_for(xs)
        for s, x in zip(static, xs):
            s.copy_(x)
        graph.replay()
        return out.float().cpu().numpy()

    def describe(self) -> str:
        return f"torch ({self.device}{', fp16' if self.fp16 else ''}{', cuda graph' if self.cuda_graph else ''})"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, model_path, mode: str, providers: list[str] | None = None, threads: int = 0,
                 image_domain: str = "auto") -> None:
        import onnxruntime as ort

        model, self.meta = _load(model_path, mode, image_domain)
        super().__init__(mode, model.cfg.descriptor_dim, (model.cfg.input_height, model.cfg.input_width))
        from ..model.io import default_model_path

        path = onnx_path(Path(model_path) if model_path is not None else default_model_path(), mode, model.image_domain)
        if not _onnx_is_current(path, self.meta["fingerprint"], model.cfg, model.image_domain):
            log.info("exporting %s (missing, or from other weights or another config)", path)
            export_onnx(model, path, mode, self.meta["fingerprint"])
        available = ort.get_available_providers()
        self.providers = [p for p in (providers or self.PREFERRED) if p in available]
        opts = ort.SessionOptions()
        # Intra-op threads keep ORT's default (they spin briefly between runs). Measured on 2 cores:
        # turning spinning off halved the node's overhead against a busy-polling harness, but with
        # publishers that block (drivers, `attnlink replay`), the realistic case, it cut the demo
        # from 23 Hz to 8.5 Hz (idle cores wake slowly): docs/deployment.md.
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, rgb=None, depth=None) -> np.ndarray:
        feeds = dict(zip(self.input_names, self._inputs(rgb, depth)))
        return self.session.run(None, feeds)[0]

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.session.get_providers())})"


def _load(model_path, mode: str, image_domain: str, device="cpu"):
    """The model and its metadata, with ``image_domain`` set for an image graph (the other modes
    have no pseudo-LiDAR network to choose; a wrong value is still refused)."""
    model, meta = load_model(model_path, device)
    model.set_image_domain(image_domain)
    if mode != "image":
        model.set_image_domain("auto")
    return model, meta


def _onnx_meta(path: Path) -> dict:
    """The ``attnlink`` metadata of an exported ONNX ({} when missing or unreadable)."""
    import json

    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return {}
    for p in proto.metadata_props:
        if p.key == "attnlink":
            try:
                return json.loads(p.value)
            except ValueError:
                return {}
    return {}


def _onnx_is_current(path: Path, fingerprint: str, cfg, image_domain: str = "auto") -> bool:
    """Whether the ONNX beside a model was exported from these weights AND this config (a model
    JSON edited without new weights, e.g. a query-time setting, keeps its fingerprint) AND this
    image domain (files from before the domain existed traced "auto")."""
    import json

    if not path.is_file():
        return False
    meta = _onnx_meta(path)
    return (meta.get("fingerprint") == fingerprint and meta.get("config") == json.loads(json.dumps(cfg.to_dict()))
            and meta.get("image_domain", "auto") == image_domain)


def model_key(fingerprint: str, cfg) -> str:
    """Short digest of weights + config: names derived files (TensorRT engines) so that a new
    model at the same path never reuses an engine built from the old one."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps({"fingerprint": fingerprint, "config": cfg.to_dict()}, sort_keys=True).encode()).hexdigest()[:12]


class TensorRTBackend(Backend):
    """FP16 TensorRT 10 engine built from the ONNX with an optimisation profile (batch 1..max),
    cached beside the model per GPU model and TensorRT version; buffers are torch tensors."""

    name = "tensorrt"

    def __init__(self, model_path, mode: str, max_batch: int = 8, fp16: bool = True, image_domain: str = "auto") -> None:
        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT backend needs a CUDA GPU; none is visible")
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("TensorRT backend needs the 'tensorrt' Python package (pip install tensorrt)") from None
        model, self.meta = _load(model_path, mode, image_domain)
        super().__init__(mode, model.cfg.descriptor_dim, (model.cfg.input_height, model.cfg.input_width))
        from ..model.io import default_model_path

        base = Path(model_path) if model_path is not None else default_model_path()
        onnx_file = onnx_path(base, mode, model.image_domain)
        if not _onnx_is_current(onnx_file, self.meta["fingerprint"], model.cfg, model.image_domain):
            export_onnx(model, onnx_file, mode, self.meta["fingerprint"])
        gpu = torch.cuda.get_device_name().replace(" ", "_")
        key = model_key(self.meta["fingerprint"], model.cfg)
        engine_file = onnx_file.with_name(f"{onnx_file.stem}.{key}.{gpu}.trt{trt.__version__}.{'fp16' if fp16 else 'fp32'}.engine")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        if not engine_file.is_file():
            log.info("building TensorRT engine %s", engine_file)
            self._build(onnx_file, engine_file, model, max_batch, fp16)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{engine_file}: engine could not be deserialised (delete it to rebuild)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.max_batch = max_batch

    def _build(self, onnx_file: Path, engine_file: Path, model, max_batch: int, fp16: bool) -> None:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_file.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise AttnLinkError(f"{onnx_file}: TensorRT could not parse the ONNX ({errors})")
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        h, w = self.input_hw
        for name in INPUTS[self.mode]:
            c = 3 if name == "rgb" else 1
            profile.set_shape(name, (1, c, h, w), (1, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise AttnLinkError(f"{onnx_file}: TensorRT engine build failed")
        tmp = engine_file.with_suffix(".tmp")
        tmp.write_bytes(bytes(serialized))
        tmp.replace(engine_file)

    def encode(self, rgb=None, depth=None) -> np.ndarray:
        arrays = self._inputs(rgb, depth)
        B = arrays[0].shape[0]
        if B > self.max_batch:
            return np.concatenate([self.encode(*(None if a is None else a[s : s + self.max_batch] for a in (rgb, depth)))
                                   for s in range(0, B, self.max_batch)])
        with torch.cuda.stream(self.stream):
            inputs = [torch.from_numpy(a).cuda(non_blocking=True) for a in arrays]
            for name, t in zip(INPUTS[self.mode], inputs):
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            out = torch.empty((B, self.descriptor_dim), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address("descriptor", out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise AttnLinkError("TensorRT execution failed")
        self.stream.synchronize()
        return out.cpu().numpy()


def make_backend(kind: str, model_path, mode: str, **kwargs) -> Backend:
    """A backend by name; ``auto`` picks the fastest present one and logs why."""
    if kind == "torch":
        return TorchBackend(model_path, mode, **kwargs)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(model_path, mode, **kwargs)
    if kind == "tensorrt":
        return TensorRTBackend(model_path, mode, **kwargs)
    if kind != "auto":
        raise AttnLinkError(f"unknown backend {kind!r} (choose from {', '.join(BACKENDS)})")
    domain = {"image_domain": kwargs.get("image_domain", "auto")}  # auto's candidates keep their own defaults otherwise
    try:
        b = TensorRTBackend(model_path, mode, **domain)
        log.info("backend auto: tensorrt (%s)", torch.cuda.get_device_name())
        return b
    except BackendUnavailable as exc:
        log.info("backend auto: tensorrt not used: %s", exc)
    candidates = [TorchBackend(model_path, mode, fp16=torch.cuda.is_available(), **domain), OnnxRuntimeBackend(model_path, mode, **domain)]
    timings = {}
    for b in candidates:
        x = [np.random.default_rng(0).random((1, 3 if n == "rgb" else 1, *b.input_hw), dtype=np.float32) for n in INPUTS[mode]]
        feeds = dict(zip(INPUTS[mode], x))
        b.encode(**feeds)
        t = time.perf_counter()
        for _ in range(3):
            b.encode(**feeds)
        timings[b.describe()] = (time.perf_counter() - t) / 3
    best = min(range(len(candidates)), key=lambda i: timings[candidates[i].describe()])
    log.info("backend auto: %s (%.1f ms); measured %s", candidates[best].describe(), 1e3 * timings[candidates[best].describe()],
             ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in timings.items()))
    return candidates[best]
