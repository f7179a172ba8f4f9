import json
import os

import numpy as np
import pytest

from attnlink_ros.errors import DataError
from attnlink_ros.retrieval.place_map import PlaceMap, PlaceTable


def _table(n):
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 3] = np.arange(n)
    return PlaceTable(poses, np.arange(n) * 0.1, np.full(n, "00"), np.arange(n), poses[:, [0, 2], 3])


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
def test_exact_search_matches_brute_force(storage):
    db, q = _unit(500, 64), _unit(20, 64, seed=1)
    pm = PlaceMap.build(db, _table(500), "f" * 64, "flat", storage)
    scores, idx = pm.search(q, 5)
    ref = np.argsort(-(q @ db.T), axis=1)[:, :5]
    assert (idx[:, 0] == ref[:, 0]).all()
    np.testing.assert_allclose(scores[:, 0], (q @ db.T).max(1), atol=2e-3 if storage == "fp16" else 1e-5)


def test_approximate_indexes_find_the_nearest_of_structured_data():
    base = _unit(200, 64)
    rng = np.random.default_rng(3)
    db = np.concatenate([base + 0.05 * rng.normal(size=base.shape) for _ in range(20)]).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.choice(len(db), 50, replace=False)] + 0.01 * rng.normal(size=(50, 64)).astype(np.float32)
    exact = np.argmax(q @ db.T, axis=1)
    for kind in ("ivf", "ivfpq", "hnsw"):
        pm = PlaceMap.build(db, _table(len(db)), "f" * 64, kind)
        _, idx = pm.search(q, 1)
        assert np.mean(idx[:, 0] == exact) > 0.8, kind


def test_round_trip_and_hits(tmp_path):
    db = _unit(50, 32)
    pm = PlaceMap.build(db, _table(50), "a" * 64, "flat")
    pm.save(tmp_path / "map")
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == ["index.faiss", "manifest.json", "places.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["map"]  # no temporary left behind
    pm2 = PlaceMap.load(tmp_path / "map", model_fingerprint="a" * 64, descriptor_dim=32)
    hits = pm2.hits(db[7:8], 3)[0]
    assert hits[0]["index"] == 7 and set(hits[0]) == {"index", "sequence", "frame", "stamp", "pose", "score"}
    assert hits[0]["pose"][0][3] == 7.0 and hits[0]["sequence"] == "00"
    man = json.loads((tmp_path / "map/manifest.json").read_text())
    assert man["places"] == 50 and man["metric"] == "inner_product" and man["descriptor_dim"] == 32
    pm.save(tmp_path / "map")  # overwriting keeps one complete map
    assert [p.name for p in tmp_path.iterdir()] == ["map"]


def test_refusals(tmp_path):
    pm = PlaceMap.build(_unit(30, 16), _table(30), "a" * 64, "flat")
    pm.save(tmp_path / "m")
    with pytest.raises(DataError, match="rebuild the map with this model"):
        PlaceMap.load(tmp_path / "m", model_fingerprint="b" * 64)
    with pytest.raises(DataError, match="16-D, the model's are 256-D"):
        PlaceMap.load(tmp_path / "m", descriptor_dim=256)
    with pytest.raises(DataError, match="dimension 8 does not match"):
        pm.search(_unit(2, 8), 3)
    man = json.loads((tmp_path / "m/manifest.json").read_text())
    (tmp_path / "m/manifest.json").write_text(json.dumps({**man, "format_version": 99}))
    with pytest.raises(DataError, match="format version 99"):
        PlaceMap.load(tmp_path / "m")
    (tmp_path / "m/manifest.json").write_text(json.dumps({**man, "metric": "l2"}))
    with pytest.raises(DataError, match="metric"):
        PlaceMap.load(tmp_path / "m")
    (tmp_path / "m/manifest.json").write_text(json.dumps(man))
    idx = tmp_path / "m/index.faiss"
    idx.write_bytes(idx.read_bytes()[: os.path.getsize(idx) // 2])
    with pytest.raises(DataError, match="index unreadable"):
        PlaceMap.load(tmp_path / "m")
    pm.save(tmp_path / "m")
    t = tmp_path / "m/places.npz"
    t.write_bytes(t.read_bytes()[:100])
    with pytest.raises(DataError, match="place table unreadable"):
        PlaceMap.load(tmp_path / "m")
    with pytest.raises(DataError, match="not a place map"):
        PlaceMap.load(tmp_path)


def test_to_gpu_reports_why_not():
    pm = PlaceMap.build(_unit(20, 16), _table(20), "a" * 64, "flat")
    where = pm.to_gpu()
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        assert where.startswith("cpu:")
    assert pm.search(_unit(1, 16), 1)[1].shape == (1, 1)
