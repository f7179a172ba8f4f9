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
    assert hits[0]["index"] == 7 and set(hits[0]) == {"index", "sequence", "frame", "stamp", "pose", "score", "view", "view_yaw_deg", "view_offset_m"}
    assert hits[0]["view"] == 0 and hits[0]["view_yaw_deg"] == 0.0
    assert hits[0]["pose"][0][3] == 7.0 and hits[0]["sequence"] == "00"
    man = json.loads((tmp_path / "map/manifest.json").read_text())
    assert man["places"] == 50 and man["metric"] == "inner_product" and man["descriptor_dim"] == 32
    assert man["format_version"] == 2 and man["views"] == 1 and man["view_yaws_deg"] == [0.0] and man["vectors"] == 50
    assert sorted(man["files"]) == ["index.faiss", "places.npz"] and all(len(h) == 64 for h in man["files"].values())
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
    with pytest.raises(DataError, match="index.faiss: index does not match its sha256"):
        PlaceMap.load(tmp_path / "m")
    pm.save(tmp_path / "m")
    t = tmp_path / "m/places.npz"
    t.write_bytes(t.read_bytes()[:100])
    with pytest.raises(DataError, match="place table does not match its sha256"):
        PlaceMap.load(tmp_path / "m")
    with pytest.raises(DataError, match="not a place map"):
        PlaceMap.load(tmp_path)
    with pytest.raises(DataError, match="a file, not a map directory"):  # was NotADirectoryError
        PlaceMap.load(tmp_path / "m" / "manifest.json")


def test_to_gpu_reports_why_not():
    pm = PlaceMap.build(_unit(20, 16), _table(20), "a" * 64, "flat")
    where = pm.to_gpu()
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        assert where.startswith("cpu:")
    assert pm.search(_unit(1, 16), 1)[1].shape == (1, 1)


def test_checksum_is_checked_before_faiss_parses(tmp_path, monkeypatch):
    """One flipped byte (same size) in the index is refused, and faiss.read_index is never called."""
    import faiss

    pm = PlaceMap.build(_unit(30, 16), _table(30), "a" * 64, "flat")
    pm.save(tmp_path / "m")
    idx = tmp_path / "m/index.faiss"
    b = bytearray(idx.read_bytes())
    b[len(b) // 2] ^= 0xFF
    idx.write_bytes(bytes(b))
    calls = []
    monkeypatch.setattr(faiss, "read_index", lambda *a: calls.append(a))
    with pytest.raises(DataError, match="sha256"):
        PlaceMap.load(tmp_path / "m")
    assert calls == []


def test_version_1_map_is_refused_in_one_line(tmp_path):
    pm = PlaceMap.build(_unit(30, 16), _table(30), "a" * 64, "flat")
    pm.save(tmp_path / "m")
    man = json.loads((tmp_path / "m/manifest.json").read_text())
    v1 = {k: v for k, v in man.items() if k not in ("files", "views", "view_yaws_deg", "vectors")}
    (tmp_path / "m/manifest.json").write_text(json.dumps({**v1, "format_version": 1}))
    with pytest.raises(DataError, match="format version 1 is not 2.*rebuild the map with `attnlink build-map`") as e:
        PlaceMap.load(tmp_path / "m")
    assert "\n" not in str(e.value)
    (tmp_path / "m/manifest.json").write_text(json.dumps({k: v for k, v in man.items() if k != "files"}))
    with pytest.raises(DataError, match="no checksum for index.faiss"):
        PlaceMap.load(tmp_path / "m")


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_views_search_answers_places_at_their_best_view(tmp_path, index_type):
    """K views a place: each place once, its score the best of its views (brute force), the view's yaw."""
    n, K, d = 200, 4, 32
    views = _unit(n * K, d, seed=5).reshape(n, K, d)
    q = _unit(15, d, seed=6)
    pm = PlaceMap.build(views, _table(n), "a" * 64, index_type, "fp32")
    assert pm.views == 4 and list(pm.view_yaws) == [0.0, 90.0, 180.0, -90.0] and pm.index.ntotal == n * K
    pm.save(tmp_path / "m")
    pm = PlaceMap.load(tmp_path / "m")
    sims = np.einsum("qd,nkd->qnk", q, views)  # (Q, N, K)
    best_place = sims.max(2)
    scores, idx, view = pm.search_views(q, 5)
    ref = np.argsort(-best_place, axis=1)[:, :5]
    agree = np.mean(idx == ref)
    assert agree > (0.99 if index_type == "flat" else 0.9)
    for b in range(len(q)):
        assert len(set(idx[b])) == 5  # deduplicated
        ok = idx[b] == ref[b]
        np.testing.assert_array_equal(view[b][ok], sims[b, idx[b][ok]].argmax(1))
        np.testing.assert_allclose(scores[b][ok], best_place[b, idx[b][ok]], atol=1e-4)
    hits = pm.hits(q[:1], 3)[0]
    assert hits[0]["view_yaw_deg"] == pm.view_yaws[hits[0]["view"]]


def test_views_k1_is_the_single_view_map():
    db = _unit(100, 16)
    a = PlaceMap.build(db, _table(100), "a" * 64, "flat", "fp32")
    b = PlaceMap.build(db[:, None, :], _table(100), "a" * 64, "flat", "fp32", view_yaws_deg=[0.0])
    q = _unit(10, 16, seed=2)
    for x, y in zip(a.search(q, 7), b.search(q, 7)):
        np.testing.assert_array_equal(x, y)


def test_view_rotation_convention():
    from attnlink_ros.retrieval.views import rotate_scan, view_yaws, wrap_deg, yaw_of
    from attnlink_ros.retrieval.loops import _yaw

    assert list(view_yaws(8)) == [0.0, 45.0, 90.0, 135.0, 180.0, -135.0, -90.0, -45.0]
    assert wrap_deg(-180.0) == 180.0 and wrap_deg(270.0) == -90.0
    p = np.array([[1.0, 0.0, 0.5, 0.7], [0.0, 2.0, 0.0, 0.1]], np.float32)
    assert rotate_scan(p, 0.0) is p
    # a point straight left of the LiDAR is straight ahead of a LiDAR turned 90 degrees left
    np.testing.assert_allclose(rotate_scan(p, 90.0), [[0, -1, 0.5, 0.7], [2, 0, 0, 0.1]], atol=1e-6)
    # the query seen through view yaw sits at Rz(yaw) in the place frame: mapping its points back
    # with that transform restores the place's scan
    T = _yaw(90.0)
    back = (T[:3, :3] @ rotate_scan(p, 90.0)[:, :3].T).T
    np.testing.assert_allclose(back, p[:, :3], atol=1e-6)
    assert yaw_of(T) == pytest.approx(90.0)
    # about a tilted vertical (a LiDAR mounted with a lean): the axis is kept, lengths too
    from attnlink_ros.retrieval.views import vertical_axis, view_rotation

    Tr = np.eye(4)
    Tr[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # LiDAR x forward, z up -> camera z forward, y down
    np.testing.assert_allclose(vertical_axis(Tr), [0, 0, 1], atol=1e-12)
    u = np.array([0.01, -0.008, 1.0])
    u /= np.linalg.norm(u)
    q = rotate_scan(p, 180.0, u)
    np.testing.assert_allclose(np.linalg.norm(q[:, :3], axis=1), np.linalg.norm(p[:, :3], axis=1), rtol=1e-6)
    np.testing.assert_allclose(q[:, :3] @ u, p[:, :3] @ u, atol=1e-6)  # height above the vertical axis kept
    np.testing.assert_allclose(view_rotation(90.0, u) @ view_rotation(-90.0, u), np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(q[:, 3], p[:, 3])


def test_node_and_cli_share_the_default_view_count():
    from attnlink_ros.config import NodeConfig
    from attnlink_ros.retrieval.views import DEFAULT_VIEWS

    from attnlink_ros.retrieval.views import DEFAULT_REVERSE_OFFSET_M

    assert NodeConfig().keyframe_views == DEFAULT_VIEWS and NodeConfig().reverse_offset == DEFAULT_REVERSE_OFFSET_M
