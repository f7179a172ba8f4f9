import logging

import numpy as np
import pytest
import torch

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.errors import AttnLinkError
from attnlink_ros.inference.backends import BackendUnavailable, OnnxRuntimeBackend, TensorRTBackend, TorchBackend, make_backend
from attnlink_ros.inference.export import example_inputs, export_onnx, onnx_path, parity
from attnlink_ros.model import AttnLink, variant
from attnlink_ros.model.io import save_model
from attnlink_ros.pipeline import Frame, PlaceRecognizer, resolve_mode


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    m = AttnLink(variant("attnlink-lite")).eval()
    p = tmp_path_factory.mktemp("model") / "lite"
    save_model(m, p)
    return p


@pytest.mark.parametrize("mode", ["image", "lidar", "fused"])
def test_onnx_parity_random_inputs(model_path, mode):
    from attnlink_ros.model.io import load_model

    model, meta = load_model(model_path)
    path = export_onnx(model, onnx_path(model_path, mode), mode, meta["fingerprint"])
    assert parity(model, path, mode, batch=3) <= 1e-4


def test_onnx_parity_real_frame(model_path, kitti_root):
    seq = KittiSequence(kitti_root, "00")
    rec = PlaceRecognizer(model_path, None, backend="torch")
    frame = Frame(float(seq.times[4]), seq.calib, seq.read_image(4), seq.read_scan(4))
    inputs = rec.prepare(frame, "fused")
    assert inputs["rgb"].shape == (1, 3, 64, 256) and inputs["depth"].shape == (1, 1, 64, 256)
    assert (inputs["depth"] > 0).sum() > 4000
    a = TorchBackend(model_path, "fused").encode(**inputs)
    b = OnnxRuntimeBackend(model_path, "fused").encode(**inputs)
    assert np.abs(a - b).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_stale_onnx_is_reexported(model_path, tmp_path):
    from attnlink_ros.model.io import load_model

    torch.manual_seed(1)
    other = AttnLink(variant("attnlink-lite")).eval()
    export_onnx(other, onnx_path(model_path, "image"), "image", "0" * 64)  # from other weights
    b = OnnxRuntimeBackend(model_path, "image")
    model, _ = load_model(model_path)
    (rgb,) = example_inputs(model, "image")
    with torch.no_grad():
        want = model(rgb=rgb).descriptor.numpy()
    assert np.abs(b.encode(rgb=rgb.numpy()) - want).max() <= 1e-4


def test_onnx_of_another_config_is_reexported(tmp_path):
    """The same weights under an edited model config (no new fingerprint): the ONNX beside it is
    re-exported, and TensorRT engines get another name."""
    import json

    from attnlink_ros.inference.backends import model_key
    from attnlink_ros.model.io import load_model

    torch.manual_seed(2)
    path = save_model(AttnLink(variant("attnlink-lite")).eval(), tmp_path / "m")
    OnnxRuntimeBackend(tmp_path / "m", "lidar")
    meta = json.loads(path.read_text())
    meta["config"]["nmf_iterations"] = 3  # a setting without weights of its own
    path.write_text(json.dumps(meta))
    model, meta2 = load_model(tmp_path / "m")
    assert model.cfg.nmf_iterations == 3 and meta2["fingerprint"] == meta["fingerprint"]
    (depth,) = example_inputs(model, "lidar")
    with torch.no_grad():
        want = model(depth=depth).descriptor.numpy()
    got = OnnxRuntimeBackend(tmp_path / "m", "lidar").encode(depth=depth.numpy())
    assert np.abs(got - want).max() <= 1e-4
    old_model, _ = load_model(tmp_path / "m")
    assert model_key(meta["fingerprint"], old_model.cfg) != model_key(meta["fingerprint"], variant("attnlink-lite"))


def test_auto_backend_logs_its_choice(model_path, caplog):
    caplog.set_level(logging.INFO, logger="attnlink.inference")
    b = make_backend("auto", model_path, "lidar")
    assert b.name in ("torch", "onnxruntime", "tensorrt")
    text = caplog.text
    assert "backend auto:" in text
    if not torch.cuda.is_available():
        assert "tensorrt not used: TensorRT backend needs a CUDA GPU" in text


def test_bad_inputs_and_unknown_backend(model_path):
    b = TorchBackend(model_path, "fused")
    with pytest.raises(ValueError, match="needs depth"):
        b.encode(rgb=np.zeros((1, 3, 64, 256), np.float32))
    with pytest.raises(ValueError, match=r"rgb must be \(B, 3, 64, 256\)"):
        b.encode(rgb=np.zeros((1, 3, 32, 256), np.float32), depth=np.zeros((1, 1, 64, 256), np.float32))
    with pytest.raises(AttnLinkError, match="unknown backend"):
        make_backend("tpu", model_path, "image")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_tensorrt_without_gpu_is_a_clear_error(model_path):
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        TensorRTBackend(model_path, "image")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_tensorrt(), reason="needs CUDA and TensorRT")
def test_tensorrt_fp16_parity(model_path):
    from attnlink_ros.model.io import load_model

    model, _ = load_model(model_path)
    rgb, depth = example_inputs(model, "fused", batch=4, seed=3)
    want = TorchBackend(model_path, "fused", device="cpu").encode(rgb.numpy(), depth.numpy())
    got = TensorRTBackend(model_path, "fused").encode(rgb.numpy(), depth.numpy())
    assert np.min(np.sum(got * want, axis=1)) >= 0.999


def test_resolve_mode_fallbacks():
    assert resolve_mode("fused", True, False) == "image"
    assert resolve_mode("fused", False, True) == "lidar"
    assert resolve_mode("fused", True, True) == "fused"
    with pytest.raises(AttnLinkError, match="needs an image"):
        resolve_mode("image", False, True)
    with pytest.raises(AttnLinkError, match="neither"):
        resolve_mode("lidar", False, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_cuda_fp16_graph_parity(model_path):
    """A captured CUDA graph gives what eager CUDA gives (re-fed new inputs: static buffers
    copied, not stale; one graph per batch size), FP16 stays close to the float32 CPU descriptor."""
    from attnlink_ros.model.io import load_model

    model, _ = load_model(model_path)
    cpu = TorchBackend(model_path, "fused", device="cpu")
    eager = TorchBackend(model_path, "fused", device="cuda", fp16=True)
    graph = TorchBackend(model_path, "fused", device="cuda", fp16=True, cuda_graph=True)
    for batch, seed in ((1, 1), (1, 2), (4, 3)):
        rgb, depth = (a.numpy() for a in example_inputs(model, "fused", batch=batch, seed=seed))
        want = cpu.encode(rgb=rgb, depth=depth)
        got_eager, got_graph = eager.encode(rgb=rgb, depth=depth), graph.encode(rgb=rgb, depth=depth)
        assert got_graph.shape == want.shape
        assert np.abs(got_graph - got_eager).max() <= 1e-3
        assert (got_eager * want).sum(1).min() >= 0.98  # cosine of FP16 to the float32 descriptor
    assert sorted(graph._graphs) == [1, 4]


def test_onnx_parity_pseudo_lidar_image_mode(tmp_path):
    """An image_depth model's image-only query (U-Net + depth branch) exports and runs in ONNX
    Runtime with the same descriptor."""
    from attnlink_ros.model.io import load_model

    torch.manual_seed(0)
    p = save_model(AttnLink(variant("attnlink-lite", image_depth=True)).eval(), tmp_path / "mono")
    model, meta = load_model(p)
    path = export_onnx(model, onnx_path(tmp_path / "mono", "image"), "image", meta["fingerprint"])
    assert parity(model, path, "image", batch=2) <= 1e-4
    backend = make_backend("onnxruntime", tmp_path / "mono", "image")
    rgb = np.random.default_rng(0).random((1, 3, 64, 256), dtype=np.float32)
    with torch.no_grad():
        want = model(rgb=torch.from_numpy(rgb)).descriptor.numpy()
    assert np.abs(backend.encode(rgb=rgb) - want).max() <= 1e-4


def test_real_kitti_drive_probe(kitti_root):
    """The sim-to-real probe on the real frames (four drives of ten): one LiDAR map of all 40,
    each query asks which drive it comes from. LiDAR queries find their own frame (the probe's
    map is right); the image-only number is reported (model card), not judged."""
    from attnlink_ros.evaluation.kitti_probe import drive_probe, kitti_drives
    from attnlink_ros.pipeline import PlaceRecognizer

    assert kitti_drives(kitti_root) == ["00", "01", "02", "08"]
    rec = PlaceRecognizer(None, None, backend="onnxruntime")
    lidar = drive_probe(rec, kitti_root, views=1, mode="lidar")
    assert lidar["frames"] == 40 and lidar["chance"] == 0.25 and lidar["own_frame_top1"] == 1.0 and lidar["recall@1"] == 1.0
    img = drive_probe(rec, kitti_root, views=2)
    assert img["query_mode"] == "image" and img["frames"] == 40 and sum(img["top1_drive_counts"].values()) == 40
    assert 0.0 <= img["recall@1"] <= 1.0 and set(img["recall@1_by_drive"]) == {"00", "01", "02", "08"}
