"""``attnlink <subcommand>``: the command line of attnlink_ros.

Every subcommand has ``--help`` and ``--json FILE``; an error is one line on stderr and a
non-zero exit (1 for bad input, 2 for bad usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import AttnLinkError
from .retrieval.loops import LoopConfig
from .retrieval.views import DEFAULT_REVERSE_OFFSET_M, DEFAULT_VIEWS


def _write_json(path: str | None, data: Any) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# synth


def cmd_synth(args: argparse.Namespace) -> dict:
    from .data.synth import SynthConfig, write_synthetic_sequence
    from .evaluation.protocols import revisit_summary
    from .geometry.poses import ground_xy, load_poses, load_times

    if args.frames <= 0:
        raise AttnLinkError(f"--frames must be positive, got {args.frames}")
    cfg = SynthConfig(frames=args.frames, seed=args.seed, camera_effects=args.camera_effects, scene_variety=args.scene_variety)
    t0 = time.perf_counter()
    seq_dir = write_synthetic_sequence(args.out, cfg, sequence=args.sequence, workers=args.workers, progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    poses = load_poses(Path(args.out) / "dataset" / "poses" / f"{args.sequence}.txt")
    times = load_times(seq_dir / "times.txt")
    result = {
        "sequence_dir": str(seq_dir),
        "seed": args.seed,
        "camera_effects": bool(args.camera_effects),
        "scene_variety": bool(args.scene_variety),
        "workers": args.workers,
        "seconds": round(elapsed, 2),
        "ms_per_frame_wall": round(1000 * elapsed / args.frames, 1),
        **revisit_summary(ground_xy(poses), times),
    }
    print(f"wrote {args.frames} frames to {seq_dir} in {elapsed:.1f} s "
          f"({result['ms_per_frame_wall']} ms/frame wall, {args.workers} worker(s)); "
          f"path {result['path_length_m']} m, {result['revisit_queries']} revisit queries")
    return result


# ----------------------------------------------------------------------------------------------
# project


def cmd_project(args: argparse.Namespace) -> dict:
    import numpy as np

    from .data.kitti import read_image, read_velodyne_bin
    from .geometry.calibration import Calibration
    from .geometry.projection import sparse_depth_full

    calib = Calibration.from_kitti_odometry(args.calib, camera=args.camera)
    image = read_image(args.image)
    h, w = image.shape[:2]
    if args.pseudo_depth:
        return _project_pseudo(args, calib, image)
    if not args.scan:
        raise AttnLinkError("--scan is needed (or --pseudo-depth for the image's predicted depth)")
    points = read_velodyne_bin(args.scan)
    depth = sparse_depth_full(points, calib, w, h)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, depth)
    filled = depth > 0
    result = {
        "out": str(out),
        "shape": [h, w],
        "points": int(len(points)),
        "filled_pixels": int(filled.sum()),
        "depth_min_m": float(depth[filled].min()) if filled.any() else None,
        "depth_max_m": float(depth[filled].max()) if filled.any() else None,
    }
    if args.preview:
        import cv2

        vis = image.copy()
        ys, xs = np.nonzero(filled)
        colours = cv2.applyColorMap(np.clip(255 - depth[filled] * 4, 0, 255).astype(np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0]
        vis[ys, xs] = colours
        cv2.imwrite(str(args.preview), vis)
        result["preview"] = str(args.preview)
    print(f"{out}: {w}x{h} float32 depth, {result['filled_pixels']} of {len(points)} points' pixels filled")
    return result


# ----------------------------------------------------------------------------------------------
# revisits


def cmd_revisits(args: argparse.Namespace) -> dict:
    from .evaluation.plots import plot_revisits
    from .evaluation.protocols import revisit_queries, revisit_summary
    from .geometry.poses import ground_xy, load_poses, load_times

    poses = load_poses(args.poses)
    times = load_times(args.times)
    if len(poses) != len(times):
        raise AttnLinkError(f"{args.poses}: {len(poses)} pose rows but {len(times)} timestamps in {args.times}")
    from .geometry.poses import headings_deg

    xy = ground_xy(poses)
    result = revisit_summary(xy, times, headings_deg(poses))
    if args.plot:
        q = revisit_queries(xy, times).queries
        plot_revisits(xy, q, args.plot, title=f"{Path(args.poses).name}: {len(q)} revisit queries")
        result["plot"] = str(args.plot)
    print(f"frames {result['frames']}  path {result['path_length_m']} m  revisit queries {result['revisit_queries']}")
    c = result["revisit_by_heading"]
    if result["revisit_queries"]:
        print(f"by heading: same {c['same']}  reverse {c['reverse']}  other {c['other']}; reachable by a map of K views: "
              + "  ".join(f"K={k} {v:.3f}" for k, v in result["reachable_share"].items()) + " (K=1: the same-heading ceiling)")
    return result


# ----------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> dict:
    """The main job on the embedded default: a synthetic drive (or --data), its first half as a
    LiDAR map (shipped model), the second half replayed over ROS 2 through the real node."""
    from .data.kitti import KittiSequence
    from .data.synth import SynthConfig, write_synthetic_sequence
    from .evaluation.plots import plot_revisits
    from .evaluation.protocols import revisit_queries

    out = Path(args.out)
    if args.views < 1:
        raise AttnLinkError(f"--views must be >= 1, got {args.views}")
    if args.data:
        seq = KittiSequence(args.data, args.sequence)
        frames = [int(i) for i in seq.available_frames()]
        map_frames, query_frames = frames[: len(frames) // 2], frames[len(frames) // 2 :]
    else:
        # the synthetic route laps its first block clockwise twice, then drives it the other way
        # round: the first lap (3/8 of the drive) is the map, the second half the live queries,
        # which revisit the map in its own direction first, then in reverse; only those frames are rendered
        n = args.frames
        map_frames, query_frames = list(range(int(0.375 * n))), list(range(n // 2, n))
        write_synthetic_sequence(out / "town", SynthConfig(frames=n, seed=args.seed), workers=args.workers, progress=not args.quiet,
                                 only=map_frames + query_frames)
        seq = KittiSequence(out / "town", "00")
    if len(map_frames) < 1 or len(query_frames) < 1:
        raise AttnLinkError(f"{seq.dir}: fewer than two frames with both a scan and an image")
    if not seq.has_poses:
        raise AttnLinkError(f"{seq.dir}: the demo needs ground-truth poses (dataset/poses/{seq.name}.txt) to score the hits")
    result: dict[str, Any] = {"sequence_dir": str(seq.dir), "frames": len(map_frames) + len(query_frames)}
    proto = revisit_queries(seq.xy, seq.times)
    result["trajectory_plot"] = str(plot_revisits(seq.xy, proto.queries, out / "trajectory.png", title=f"{seq.dir}"))
    from .ros.demo import run_demo

    result.update(run_demo(seq, out, args.model, args.mode, args.backend, map_frames, query_frames, rate=args.rate,
                           progress=not args.quiet, print_every=args.print_every, views=args.views, scans=not args.no_scans))
    return result


def cmd_replay(args: argparse.Namespace) -> dict:
    from .data.bags import bag_records, kitti_records
    from .ros.replay import Replayer

    if bool(args.bag) == bool(args.data):
        raise AttnLinkError("give either --data ROOT (with --sequence) or --bag PATH")
    topics = {k: v for k, v in (("image", args.image_topic), ("camera_info", args.camera_info_topic), ("points", args.points_topic)) if v}
    if args.data:
        from .data.kitti import KittiSequence

        seq = KittiSequence(args.data, args.sequence)
        frames = [int(i) for i in seq.available_frames()]
        if args.frames:
            frames = [i for i in frames if args.frames[0] <= i < args.frames[1]]
        records = list(kitti_records(args.data, args.sequence, frames))
        total = len(frames)
    else:
        records = list(bag_records(args.bag, {k: v for k, v in (("image", args.bag_image_topic), ("camera_info", args.bag_camera_info_topic),
                                                                 ("points", args.bag_points_topic)) if v}))
        total = len({round(r.stamp, 6) for r in records})
    rp = Replayer(topics, clock=args.clock, lockstep=args.lockstep, lockstep_timeout=args.lockstep_timeout, reliable=not args.best_effort)
    try:
        kinds = tuple(sorted({r.kind for r in records[:6]} - {"camera_info"}))  # the large ones; camera_info repeats each frame
        if args.wait_subscribers > 0 and not rp.wait_for_subscribers(args.wait_subscribers, kinds):
            print(f"not every topic ({', '.join(kinds)}) has a subscriber after {args.wait_subscribers:g} s: publishing anyway")
        stats = rp.run(records, rate=args.rate, loop=args.loop, progress=not args.quiet, total=total)
    finally:
        rp.close()
    d = stats.as_dict()
    d["sent_at"] = {f"{k:.6f}": v for k, v in rp.sent_at.items()}  # frame stamp -> time.monotonic() when published
    print(f"published {d['frames']} frames ({d['published']}) in {d['wall_s']:.1f} s ({d['rate_hz']:.1f} Hz; data span {d['data_s']:.1f} s)")
    return d


def cmd_to_bag(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from .data.bags import DEFAULT_TOPICS, kitti_records, write_bag
    from .data.kitti import KittiSequence

    seq = KittiSequence(args.data, args.sequence)
    frames = [int(i) for i in seq.available_frames()]
    if args.frames:
        frames = [i for i in frames if args.frames[0] <= i < args.frames[1]]
    if not frames:
        raise AttnLinkError(f"{seq.dir}: no frame with both a scan and an image")
    recs = tqdm(kitti_records(args.data, args.sequence, frames), total=3 * len(frames), desc="to-bag", unit="msg", disable=args.quiet)
    counts = write_bag(recs, args.out, storage=args.storage)
    print(f"{args.out}: {len(frames)} frames, {sum(counts.values())} messages ({args.storage}): " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return {"out": str(args.out), "frames": len(frames), "messages": counts, "topics": DEFAULT_TOPICS, "storage": args.storage}


# ----------------------------------------------------------------------------------------------
# train and eval


def cmd_train(args: argparse.Namespace) -> dict:
    import yaml

    sections = yaml.safe_load(Path(args.config).read_text()) or {}
    if "real_image" in sections:
        return _train_real_image(args)
    if "mixture" in sections:
        return _train_mixture(args)
    if args.held_out is not None:
        raise AttnLinkError("--held-out applies to a real_image or mixture config")
    from .train.trainer import RunConfig, train

    cfg = RunConfig.load(args.config, {"steps": args.steps, "out": args.out})
    import os

    result = train(cfg, fresh=args.fresh, progress=not args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        best = result["best_val_image_recall@1"]
        print(f"trained {result['steps']} steps into {result['out']}; best validation image->lidar revisit "
              f"recall@1 {best:.3f}" if best >= 0 else f"trained {result['steps']} steps into {result['out']} (no validation recall)")
    return result


def _train_real_image(args: argparse.Namespace) -> dict:
    """``train`` with a ``real_image:`` config: the pseudo-LiDAR network on real pairs (train/real_image.py)."""
    from .train.real_image import RealImageConfig, train_real_image

    cfg = RealImageConfig.load(args.config, {"steps": args.steps, "out": args.out, "held_out": args.held_out})
    r = train_real_image(cfg, fresh=args.fresh, progress=not args.quiet)
    print(f"trained {r['steps']} steps into {cfg.out} (real drives {', '.join(r['train_drives'])})")
    ev = r.get("held_out_eval")
    if ev:
        from .evaluation.depth import format_table

        print(format_table(ev["depth"], f"held-out fold {cfg.held_out}: pseudo-depth vs projected LiDAR"))
        wd = ev["which_drive"]
        print(f"which drive (map: first halves of {len(wd['image']['by_drive']) and wd['map_places']} places x {wd['views']} views, "
              f"chance {wd['chance']:.3f}; {wd['queries']} held-out queries): image {wd['image']['recall@1']:.3f}, "
              f"lidar {wd['lidar']['recall@1']:.3f}, fused {wd['fused']['recall@1']:.3f}")
    return r


def _train_mixture(args: argparse.Namespace) -> dict:
    """``train`` with a ``mixture:`` config: two pseudo-LiDAR networks and the gate between them (train/mixture.py)."""
    from .train.mixture import MixtureConfig, train_mixture

    cfg = MixtureConfig.load(args.config, {"out": args.out, "held_out": args.held_out})
    r = train_mixture(cfg, progress=not args.quiet)
    fit = r["gate_fit"]
    print(f"mixture into {cfg.out}: gate right on {fit['render_accuracy']:.3f} of {fit['renders']} renders and "
          f"{fit['camera_accuracy']:.3f} of {fit['camera_frames']} camera frames (training, mirrors included)")
    ev = r.get("held_out_eval")
    if ev:
        from .evaluation.depth import format_table

        p = r["held_out_render_probability"]
        print(f"held-out fold {cfg.held_out}: render probability median {p['median']:.3f}, max {p['max']:.3f} ({p['above_0.5']} of {p['frames']} above 0.5)")
        print(format_table(ev["depth"], f"held-out fold {cfg.held_out}: pseudo-depth vs projected LiDAR"))
        wd = ev["which_drive"]
        print(f"which drive ({wd['queries']} held-out queries, chance {wd['chance']:.3f}): image {wd['image']['recall@1']:.3f}, "
              f"lidar {wd['lidar']['recall@1']:.3f}, fused {wd['fused']['recall@1']:.3f}")
    return r


def _project_pseudo(args: argparse.Namespace, calib, image) -> dict:
    """``project --pseudo-depth``: the model's depth of the image at full resolution (H, W), float32
    metres, 0 outside the part of the image the network sees (its LiDAR-covered crop)."""
    import cv2
    import numpy as np

    from .evaluation.depth import predict_depth
    from .geometry.projection import model_grid
    from .model.io import load_model
    from .pipeline import Frame, network_inputs

    model, meta = load_model(args.model)
    model.set_image_domain(args.image_domain)
    h, w = image.shape[:2]
    grid = model_grid(calib, w, h, model.cfg.input_height, model.cfg.input_width, model.cfg.input_fov_deg)
    pred = predict_depth(model, network_inputs(Frame(0.0, calib, image=image), grid, "image")["rgb"])[0, 0]  # (h', w') metres
    window = cv2.resize(pred, (grid.crop_w, grid.crop_h), interpolation=cv2.INTER_LINEAR)
    t, l = grid.top, grid.left  # a level grid's window may reach past the image: paste the part inside
    depth = np.zeros((h, w), np.float32)
    depth[max(t, 0):min(t + grid.crop_h, h), max(l, 0):min(l + grid.crop_w, w)] = \
        window[max(-t, 0):max(-t, 0) + min(t + grid.crop_h, h) - max(t, 0), max(-l, 0):max(-l, 0) + min(l + grid.crop_w, w) - max(l, 0)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, depth)
    filled = depth > 0
    return {"out": str(out), "shape": [h, w], "rows": [max(grid.top, 0), min(grid.top + grid.crop_h, h)], "network_grid": [grid.out_h, grid.out_w],
            "depth_min_m": float(depth[filled].min()), "depth_max_m": float(depth[filled].max()),
            "model_fingerprint": meta["fingerprint"]}


def cmd_eval(args: argparse.Namespace) -> dict:
    import tempfile

    from .evaluation.recall import evaluate_sequence
    from .model.io import load_model

    if args.real_folds:
        return _eval_real_folds(args)
    model, meta = load_model(args.model)
    model.set_image_domain(args.image_domain)
    if any(k < 1 for k in args.views):
        raise AttnLinkError(f"--views must be >= 1, got {args.views}")
    if bool(args.data) == bool(args.test_set):
        raise AttnLinkError("give --data ROOT [ROOT ...] or --test-set CONFIG (one of them)")
    if args.depth:
        return _eval_depth(args, model, meta)
    if args.track:
        return _eval_track(args, model, meta)
    args.sequences = args.sequences or ["00"]
    if args.test_set or len(args.data) > 1:
        return _eval_table(args, model, meta)
    args.data = args.data[0]
    if args.kitti_probe:
        from .evaluation.kitti_probe import drive_probe
        from .pipeline import PlaceRecognizer

        r = drive_probe(PlaceRecognizer(args.model or None, None, backend="torch", image_domain=args.image_domain), args.data,
                        views=args.views[0])
        from .model.io import trained_drives

        r["trained_on"] = trained_drives(meta, r["drives"])
        _warn_trained(r["trained_on"], "this probe")
        print(f"real KITTI probe ({r['frames']} frames of drives {', '.join(r['drives'])}, LiDAR map of all, {r['views']} view(s) a place): "
              f"image-only 'which drive' Recall@1 {r['recall@1']:.3f} (chance {r['chance']:.3f}); own frame top-1 "
              f"{r['own_frame_top1']:.3f}; by drive " + ", ".join(f"{d} {v:.2f}" for d, v in r["recall@1_by_drive"].items()))
        return r
    if args.loop_closure:
        return _eval_loops(args, model, meta)
    protocols = tuple(args.protocol) if args.protocol else ("cotemporal", "revisit")
    modes = tuple(args.mode) if args.mode else ("image", "lidar", "fused")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seq in args.sequences:
            result[seq] = evaluate_sequence(model, args.data, seq, protocols, modes, Path(args.cache or tmp),
                                            plots=args.plots, robustness=args.robustness, progress=not args.quiet, views=args.views,
                                            reverse_offset_m=args.reverse_offset)
    result["_model"] = {"fingerprint": meta["fingerprint"], "variant": meta["config"]["variant"]}
    return result


def _eval_track(args: argparse.Namespace, model, meta) -> dict:
    """``eval --track``: each drive replayed frame by frame against a map of its first part; the
    tracking filter (with and without odometry) beside the single-frame top-1, per mode."""
    import tempfile

    from .evaluation.tracking import VISUAL_MODES, TrackData, calibrate, evaluate_tracking, measured_thresholds, print_tracking, plot_tracking
    from .localization.calibration import load_for_model, save_for_model
    from .localization.tracker import DEFAULT_MIN_CONFIDENCE, TrackerConfig

    if not args.data:
        raise AttnLinkError("--track needs --data ROOT [ROOT ...]")
    modes = tuple(args.mode) if args.mode else ("image", "lidar", "fused")
    seqs = args.sequences or ["00"]
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        raise AttnLinkError(f"--min-confidence must lie in [0, 1], got {args.min_confidence}")
    cfg = TrackerConfig(k=args.track_k, require_anchor=args.verify, min_confidence=args.min_confidence)
    with tempfile.TemporaryDirectory() as tmp:
        data = [TrackData(model, root, s, Path(args.cache or tmp), args.map_fraction, args.views[0], modes, cfg.k, progress=not args.quiet,
                          verify=args.verify)
                for root in args.data for s in seqs]
        if args.visual_odometry and any(m in VISUAL_MODES for m in modes):
            for d in data:
                d.visual_odometry(progress=not args.quiet)
    result: dict[str, Any] = {}
    if args.calibrate:
        obs = calibrate(data, modes)
        # each unverified mode's publishing threshold, measured on the same drives with the fitted model
        obs = measured_thresholds(obs, [evaluate_tracking(d, obs, cfg, modes, verify_every=args.verify_every) for d in data], data, modes)
        path = save_for_model(obs, args.calibrate, meta["fingerprint"], {"map_fraction": args.map_fraction, "views": args.views[0]})
        print(f"observation model fitted on {', '.join(d.name for d in data)} -> {path}")
        for m in modes:
            o = obs[m]
            print(f"  {m}: " + (f"the belief's fixes published from confidence {o.min_confidence:.2f} (measured)" if o.min_confidence is not None else
                                "the belief's fixes never published (no threshold was precise on these drives; verified and carried poses only)"
                                if not o.belief_publishes else
                                f"the belief's fixes published from confidence {DEFAULT_MIN_CONFIDENCE:.2f} (the default; anchored by verification)"))
        result["calibration"] = str(path)
    else:
        obs = load_for_model(args.calibration, args.model, meta["fingerprint"])
    for d in data:
        r = evaluate_tracking(d, obs, cfg, modes, verify_every=args.verify_every)
        print_tracking(d.name, r, modes)
        if args.plots:
            r["plots"] = plot_tracking(d, r, modes, Path(args.plots))
        for key in ("track", "track_odometry", "track_visual"):
            for m in r.get(key, {}):
                r[key][m].pop("_fixes", None)
        result[d.name] = r
    result["_model"] = {"fingerprint": meta["fingerprint"], "variant": meta["config"]["variant"]}
    result["_tracker"] = dataclasses.asdict(cfg)
    return result


def _warn_trained(drives: list[str], what: str) -> None:
    """One line on stderr when a real-image number comes from drives the model trained on."""
    if drives:
        print(f"warning: {what} include drives the model's camera network trained on ({', '.join(drives)}, its "
              "real_train_drives): training numbers, not held out (attnlink eval --real-folds gives held-out ones)", file=sys.stderr)


def _eval_real_folds(args: argparse.Namespace) -> dict:
    """``eval --real-folds FOLDS --fold-runs PATTERN``: each fold's model on its held-out real frames
    beside the baseline model (--model, default the shipped one), per fold and pooled."""
    from .train.real_image import evaluate_folds

    if not args.fold_runs or "{fold}" not in args.fold_runs:
        raise AttnLinkError("--real-folds needs --fold-runs PATTERN with {fold} (e.g. runs/real-lite0-{fold}/model)")
    r = evaluate_folds(args.real_folds, args.fold_runs, args.model)
    if r["baseline_trained_on"]:
        _warn_trained(r["baseline_trained_on"], "the baseline model's rows")
    print(f"{'fold':12s} {'who':9s} {'AbsRel':>7s} {'d<1.25':>7s} | which drive R@1: {'image':>6s} {'lidar':>6s} {'fused':>6s} (queries)")
    for name, row in r["folds"].items():
        for who in ("model", "baseline"):
            d, w = row[who]["depth"]["pooled"]["model"], row[who]["which_drive"]
            print(f"{name:12s} {who:9s} {d['abs_rel']:7.3f} {d['delta1']:7.3f} | {'':16s}{w['image']['recall@1']:6.3f} "
                  f"{w['lidar']['recall@1']:6.3f} {w['fused']['recall@1']:6.3f} ({w['queries']}, chance {w['chance']:.3f})")
        b = row["model"]["depth"]["pooled"]["row_median"]
        print(f"{name:12s} {'row-med.':9s} {b['abs_rel']:7.3f} {b['delta1']:7.3f} |")
    for who in ("model", "baseline"):
        p = r[f"pooled_{who}"]
        print(f"{'pooled':12s} {who:9s} {p['depth']['abs_rel']:7.3f} {p['depth']['delta1']:7.3f} | {'':16s}"
              f"{p['which_drive']['image']:6.3f} {p['which_drive']['lidar']:6.3f} {p['which_drive']['fused']:6.3f}")
    return r


def _eval_depth(args: argparse.Namespace, model, meta) -> dict:
    """``eval --depth``: the image's pseudo-depth against the projected LiDAR, per drive and pooled,
    the per-row-median baseline beside it (any KITTI-layout root, poses or not)."""
    from .data.real import load_real_frames
    from .evaluation.depth import evaluate_depth, format_table, predict_depth
    from .model.io import trained_drives

    if not args.data:
        raise AttnLinkError("--depth needs --data ROOT [ROOT ...]")
    seqs = args.sequences  # None: every drive
    frames = load_real_frames(args.data, model.cfg.input_height, model.cfg.input_width, seqs, progress=not args.quiet,
                             fov_deg=model.cfg.input_fov_deg, stride=args.stride)
    table = evaluate_depth(predict_depth(model, frames.rgb), frames)
    from .data.kitti import is_synthetic

    real = [d for d in frames.drives if not any(is_synthetic(r, d) for r in args.data)]  # a town's "00" is not KITTI's
    _warn_trained(trained_drives(meta, real), "these numbers")
    print(format_table(table, f"pseudo-depth vs projected LiDAR (grid {model.cfg.input_height}x{model.cfg.input_width}, "
                              f"returns <= 80 m), model {meta['fingerprint'][:12]}"))
    out = {"depth": table, "_model": {"fingerprint": meta["fingerprint"], "variant": meta["config"]["variant"]}}
    if model.cfg.mono_encoder == "mixture" and model.image_domain == "auto":  # which of its two networks the gate hands each drive's images
        import numpy as np

        from .train.mixture import render_probability

        p = render_probability(model, frames.rgb)
        out["render_probability"] = {d: {"median": round(float(np.median(p[frames.drive == d])), 4),
                                         "max": round(float(p[frames.drive == d].max()), 4)} for d in frames.drives}
        print("the mixture's gate, probability that the image is a render (median / max per drive; > 0.5: the rendered-town "
              "network): " + ", ".join(f"{d} {v['median']:.3f} / {v['max']:.3f}" for d, v in out["render_probability"].items()))
    if args.sensitivity:
        from .evaluation.depth import descriptor_sensitivity, format_sensitivity

        out["sensitivity"] = descriptor_sensitivity(model, frames.rgb, frames.depth)
        print(format_sensitivity(out["sensitivity"], f"the depth branch's descriptor under wrong depth ({len(frames)} frames)"))
    return out


def _eval_table(args: argparse.Namespace, model, meta) -> dict:
    """``eval --test-set CONFIG`` (or several ``--data``): revisit Recall@1 per town and mode, all
    queries and same-heading ones, mean and worst town; prints the model card's table."""
    import tempfile

    from .evaluation.recall import evaluate_sequence
    from .evaluation.testset import TestSet, card_table, ensure_towns, summarise, town_row

    if args.loop_closure:
        raise AttnLinkError("--loop-closure takes one --data root")
    if args.test_set:
        ts = TestSet.load(args.test_set)
        roots = ensure_towns(ts.towns, args.towns, workers=args.workers, progress=not args.quiet)
        views, modes, sequence = [ts.views], list(args.mode or ts.modes), "00"  # --mode: a subset of the card's modes
    else:
        roots = {(Path(d).name or Path(d).resolve().name): Path(d) for d in args.data}
        if len(roots) != len(args.data):
            raise AttnLinkError("--data roots need distinct folder names (they name the table's rows)")
        views, modes, sequence = args.views[:1], list(args.mode or ["image", "lidar", "fused"]), args.sequences[0]
    rows, per_town = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in roots.items():
            print(f"town {name}: revisit protocol, {', '.join(modes)} queries, map of {views[0]} view(s) a place", flush=True)
            r = evaluate_sequence(model, root, sequence, ("revisit",), tuple(modes), Path(args.cache or tmp), progress=not args.quiet,
                                  views=views, reverse_offset_m=args.reverse_offset)
            per_town[name] = r
            rows[name] = town_row(r, modes)
    summary = summarise(rows, modes)
    table = card_table(rows, summary, modes)
    print(f"revisit Recall@1 (same heading / all revisit queries), map of {views[0]} heading view(s) a place, "
          f"model {meta['fingerprint'][:12]}:")
    print(table)
    return {"test_set": args.test_set, "views": views[0], "modes": modes, "towns": rows, "summary": summary, "table": table,
            "per_town": per_town, "_model": {"fingerprint": meta["fingerprint"], "variant": meta["config"]["variant"]}}


def _eval_loops(args: argparse.Namespace, model, meta) -> dict:
    """``eval --loop-closure``: online loop detection per sequence, with and without verification."""
    import tempfile

    from .evaluation.loops import evaluate_loop_closure
    from .retrieval.loops import LoopConfig

    modes = args.mode or ["lidar"]
    if len(modes) != 1:
        raise AttnLinkError("--loop-closure takes one --mode (the query mode; keyframes are LiDAR)")
    cfg = LoopConfig(min_score=args.loop_min_score, consistency=args.consistency, min_inlier_ratio=args.min_inlier_ratio,
                     max_error_per_inlier=args.max_error_per_inlier, candidates=args.candidates)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seq in args.sequences:
            for K in args.views:
                plot = Path(args.plots) / f"loops_{Path(args.data).resolve().name}_{seq}_{modes[0]}_K{K}.png" if args.plots else None
                if plot:
                    plot.parent.mkdir(parents=True, exist_ok=True)
                try:
                    r = evaluate_loop_closure(model, args.data, seq, modes[0], cfg, Path(args.cache or tmp), plot, progress=not args.quiet,
                                              views=K, unverified=not args.verified_only, reverse_offset_m=args.reverse_offset)
                except ValueError as exc:
                    raise AttnLinkError(str(exc)) from None
                if K == args.views[0]:
                    result[seq] = r
                if len(args.views) > 1:
                    result[seq].setdefault("views_compared", {})[str(K)] = {k: r[k] for k in ("precision", "recall", "loops_published",
                                                                                               "pose_error_median_m", "by_heading")}
    if len(args.sequences) == 1:  # the flat keys at the top level too
        r = result[args.sequences[0]]
        result.update({k: r[k] for k in ("precision", "recall", "loops_published", "pose_error_median_m", "by_heading")})
    result["_model"] = {"fingerprint": meta["fingerprint"], "variant": meta["config"]["variant"]}
    return result


# ----------------------------------------------------------------------------------------------
# slam


SLAM_VIEWS = 4  # attnlink slam's keyframes: four heading views (the node's online mode keeps DEFAULT_VIEWS)


def cmd_slam(args: argparse.Namespace) -> dict:
    """``attnlink slam``: KISS-ICP odometry + the project's loops in a GTSAM pose graph, against
    KISS-SLAM, errors by evo; one table row per sequence and system."""
    import tempfile

    from .model.io import load_model
    from .slam.pipeline import evaluate_slam

    _, meta = load_model(args.model)
    cfg = LoopConfig(min_score=args.loop_min_score, exclusion_s=args.loop_exclusion)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seq in args.sequences:
            try:
                result[seq] = evaluate_slam(args.model, args.data, seq, out=args.out, cache_dir=Path(args.cache or tmp), views=args.views,
                                            loop_cfg=cfg, reverse_offset_m=args.reverse_offset, progress=not args.quiet,
                                            peer=not args.no_peer, peer_python=args.peer_python, worker=not args.in_process)
            except (ValueError, FileNotFoundError, RuntimeError) as exc:  # RuntimeError: the loop worker failed (it says why)
                raise AttnLinkError(str(exc)) from None
    print(f"{'sequence':9s} {'system':22s} {'APE RMSE (m)':>12s} {'RPE (%)':>8s}  notes")
    for seq, r in result.items():
        lp = r["loops"]
        scale = f"odometry scale {r['odometry_scale']:.5f}, " if r.get("odometry_scale") is not None else ""
        rows = [("odometry", "KISS-ICP odometry", ""),
                ("with_loops_online", "+ loops, online iSAM2", "the graph's estimate as the drive ends"),
                ("with_loops", "+ attnlink loops", f"{scale}{lp['published']} loops, precision {lp['precision']:.3f}, recall {lp['recall']:.3f}"),
                ("kiss_slam", "KISS-SLAM (peer)", "")]
        for key, label, note in rows:
            v = r.get(key)
            if v is None:
                continue
            if "skipped" in v:
                print(f"{seq:9s} {label:22s} {'-':>12s} {'-':>8s}  skipped: {v['skipped']}")
                continue
            if key == "kiss_slam":
                note = f"{v['closures']} closures, {v['seconds']} s"
            rpe = f"{v['rpe_percent']:.3f}" if v["rpe_percent"] is not None else "-"
            print(f"{seq:9s} {label:22s} {v['ape_rmse_m']:12.3f} {rpe:>8s}  {note}")
        print(f"{seq:9s} ratio with loops / odometry {r['with_loops']['ape_rmse_m'] / max(r['odometry']['ape_rmse_m'], 1e-9):.3f}; "
              f"{r['frames']} scans in {r['seconds']['total']} s ({r['scans_per_second']} Hz); plot {r.get('plot', '-')}")
    result["_model"] = {"fingerprint": meta["fingerprint"], "variant": meta["config"]["variant"]}
    return result


# ----------------------------------------------------------------------------------------------
# export, build-map, query


def cmd_export(args: argparse.Namespace) -> dict:
    from .inference.backends import BackendUnavailable, TensorRTBackend
    from .inference.export import export_onnx, onnx_path, parity
    from .model.io import default_model_path, load_model

    base = Path(args.model) if args.model else default_model_path()
    model, meta = load_model(base)
    model.set_image_domain(args.image_domain)  # the image graph traces it (NAME.image.DOMAIN.onnx unless auto)
    modes = args.mode or ["image", "lidar", "fused"]
    result: dict[str, Any] = {"model": str(base), "fingerprint": meta["fingerprint"], "image_domain": args.image_domain, "onnx": {},
                              "tensorrt": {}}
    for mode in modes:
        path = export_onnx(model, onnx_path(base, mode, args.image_domain), mode, meta["fingerprint"])
        err = parity(model, path, mode)
        result["onnx"][mode] = {"path": str(path), "max_abs_error_vs_torch": err}
        print(f"{path}: ONNX opset 17, dynamic batch, checker ok, max |ORT - torch| = {err:.2e}")
        if not args.no_tensorrt:
            try:
                TensorRTBackend(base, mode, image_domain=args.image_domain)
                result["tensorrt"][mode] = "built"
                print(f"{mode}: TensorRT FP16 engine built and cached beside the model")
            except BackendUnavailable as exc:
                result["tensorrt"][mode] = f"skipped: {exc}"
                print(f"{mode}: TensorRT engine skipped: {exc}")
    return result


def cmd_build_map(args: argparse.Namespace) -> dict:
    from .data.kitti import KittiSequence
    from .pipeline import PlaceRecognizer
    from .retrieval.build import build_map_from_sequence

    if args.scans and not args.scan_voxel > 0:
        raise AttnLinkError(f"--scan-voxel must be > 0 m, got {args.scan_voxel}")
    rec = PlaceRecognizer(args.model, None, backend=args.backend)
    seq = KittiSequence(args.data, args.sequence)
    frames = None
    if args.frames:
        frames = [i for i in range(args.frames[0], min(args.frames[1], len(seq))) if seq.scan_path(i).is_file()]
    if args.views < 1:
        raise AttnLinkError(f"--views must be >= 1, got {args.views}")
    pm, stats = build_map_from_sequence(rec, seq, frames, args.index, args.batch, progress=not args.quiet,
                                        scan_voxel=args.scan_voxel if args.scans else None, views=args.views,
                                        reverse_offset_m=args.reverse_offset)
    out = pm.save(args.out)
    scans = f"; scans stored ({stats['stored_scan_points'] / stats['places']:.0f} points a place)" if args.scans else ""
    print(f"{out}: {stats['places']} places x {pm.views} views, {pm.dim}-D, {args.index} index; {stats['frames_per_second']:.1f} frames/s with {stats['backend']}{scans}")
    return {"out": str(out), **stats, **pm.manifest}


def cmd_query(args: argparse.Namespace) -> list:
    from .data.kitti import KittiSequence
    from .pipeline import Frame, PlaceRecognizer

    rec = PlaceRecognizer(args.model, args.map, backend=args.backend, image_domain=args.image_domain)
    seq = KittiSequence(args.data, args.sequence)
    image = seq.read_image(args.frame) if args.mode in ("image", "fused") else None
    points = seq.read_scan(args.frame) if args.mode in ("lidar", "fused") else None
    res = rec.query(Frame(float(seq.times[args.frame]), seq.calib, image, points), args.k, args.mode)
    for rank, h in enumerate(res.hits, 1):
        print(f"{rank}. place {h['index']} (sequence {h['sequence']} frame {h['frame']}, t={h['stamp']:.2f} s) score {h['score']:.4f}"
              f" view {h['view_yaw_deg']:+.0f} deg")
    return res.hits


# ----------------------------------------------------------------------------------------------


def _add_image_domain(sp: argparse.ArgumentParser, scope: str = "") -> None:
    """``--image-domain``: which of a mixture model's pseudo-LiDAR networks image queries run."""
    from .config import IMAGE_DOMAINS

    sp.add_argument("--image-domain", choices=IMAGE_DOMAINS, default="auto",
                    help=f"{scope}which of a mixture model's pseudo-LiDAR networks image queries run (model/mixture.py): camera "
                         "(real camera images), render (rendered towns), auto (default: a per-image gate, which takes dark or "
                         "blurred photographs for renders)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnlink", description="AttnLink place recognition: data, models, maps, ROS 2 node.")
    p.add_argument("--version", action="version", version=f"attnlink_ros {__version__}")
    sub = p.add_subparsers(dest="command", metavar="<subcommand>", required=True)

    def add(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
        return sp

    sp = add("synth", cmd_synth, "write a synthetic town drive in the KITTI odometry layout")
    sp.add_argument("--out", required=True, help="output root (gets dataset/sequences/XX and dataset/poses)")
    sp.add_argument("--seed", type=int, default=0, help="town and drive seed (default 0)")
    sp.add_argument("--frames", type=int, default=600, help="frames at 10 Hz (default 600: one minute)")
    sp.add_argument("--sequence", default="00", help="sequence name to write (default 00)")
    sp.add_argument("--camera-effects", action="store_true",
                    help="a real camera's response on the images: exposure error, white balance, tone, vignetting, blur, noise, JPEG "
                         "(per town and frame, deterministic; data/camera.py)")
    sp.add_argument("--scene-variety", action="store_true", help="clouds over the sky, a continuous range of car paint and cast shadows on the ground (camera only)")
    sp.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("project", cmd_project, "FoV conversion of one frame: LiDAR scan -> sparse depth map of the image size")
    sp.add_argument("--calib", required=True, help="KITTI odometry calib.txt (P2 and Tr are used)")
    sp.add_argument("--scan", help="velodyne .bin (float32 x, y, z, reflectance); needed unless --pseudo-depth")
    sp.add_argument("--image", required=True, help="the frame's image (gives the output size)")
    sp.add_argument("--out", required=True, help="output .npy: float32 (H, W) metres, 0 = no return")
    sp.add_argument("--camera", type=int, default=2, help="projection matrix P<camera> (default 2)")
    sp.add_argument("--preview", metavar="PNG", help="also write the image with the projected depth drawn on it")
    sp.add_argument("--pseudo-depth", action="store_true", help="instead: the image's depth predicted by the model's pseudo-LiDAR "
                    "network, full image size (H, W) float32 metres, 0 outside the crop the network sees (no scan needed)")
    sp.add_argument("--model", help="--pseudo-depth: model artifact; default: the shipped model")
    _add_image_domain(sp, "--pseudo-depth: ")

    sp = add("revisits", cmd_revisits, "frames, path length and revisit queries of a drive (revisit protocol)")
    sp.add_argument("--poses", required=True, help="KITTI poses file (12 values a row)")
    sp.add_argument("--times", required=True, help="KITTI times.txt")
    sp.add_argument("--plot", metavar="PNG", help="trajectory with the revisit queries marked")

    sp = add("train", cmd_train, "train a model from a YAML config (resumes from OUT/last)")
    sp.add_argument("--config", required=True, help="training config (see config/train_lite_synth.yaml)")
    sp.add_argument("--steps", type=int, help="override train.steps")
    sp.add_argument("--out", help="override train.out (run folder)")
    sp.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in the run folder")
    sp.add_argument("--held-out", help="real_image configs: the real fold left out (config/real_folds.yaml); '' = train on all")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("slam", cmd_slam, "KISS-ICP odometry + attnlink's verified loops in a GTSAM pose graph (iSAM2), beside KISS-SLAM; "
             "APE / RPE by evo against the ground truth")
    sp.add_argument("--data", required=True, help="KITTI-layout root (holding dataset/) with scans and ground-truth poses")
    sp.add_argument("--sequences", "--sequence", nargs="+", default=["00"], help="sequence(s) (default 00)")
    sp.add_argument("--model", help="model artifact (default: the shipped model); its LiDAR branch finds the loops")
    sp.add_argument("--out", default="out/slam", help="trajectories (KITTI and TUM formats) and plots (default out/slam)")
    sp.add_argument("--cache", help="folder keeping each run's front end (odometry, every scan's loop answer): a rerun that "
                    "changes only the graph reuses it (default: a temporary one)")
    sp.add_argument("--in-process", action="store_true", help="loops in this process instead of a worker process beside the "
                    "odometry (the same loops and trajectory, slower on 2 cores)")
    sp.add_argument("--views", type=int, default=SLAM_VIEWS, help=f"heading views a keyframe holds (default {SLAM_VIEWS}: as driven, "
                    "turned round and both crossings; validation town 601: crossing revisits found 0.26 -> 0.58, all 0.941 -> 0.955)")
    sp.add_argument("--reverse-offset", type=float, default=DEFAULT_REVERSE_OFFSET_M, help="reverse view's offset (m)")
    sp.add_argument("--loop-min-score", type=float, default=0.5, help="smallest candidate score (default 0.5)")
    sp.add_argument("--loop-exclusion", type=float, default=LoopConfig.exclusion_s, metavar="S",
                    help=f"a scan is matched only against keyframes at least S seconds older (default {LoopConfig.exclusion_s:g})")
    sp.add_argument("--no-peer", action="store_true", help="do not run KISS-SLAM")
    sp.add_argument("--peer-python", help="interpreter with kiss-slam (default .venv-kiss/bin/python; make kiss-slam)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("eval", cmd_eval, "recall of a model on KITTI-layout data, per sequence, protocol and query mode")
    sp.add_argument("--model", help="model artifact (NAME.json / NAME.safetensors); default: the shipped model")
    sp.add_argument("--data", nargs="+", help="KITTI-layout root(s) (holding dataset/); several: one table over them, as --test-set")
    sp.add_argument("--test-set", metavar="CONFIG", help="the model card's test set (config marked 'test: report only', e.g. "
                    "attnlink_ros/config/test_set.yaml): every town's revisit Recall@1, mean and worst town (the card's table)")
    _add_image_domain(sp)
    sp.add_argument("--towns", default="out/towns", help="--test-set: folder of the towns (sSEED); missing ones are synthesised (default out/towns)")
    sp.add_argument("--workers", type=int, default=2, help="--test-set: renderer processes for missing towns (default 2)")
    sp.add_argument("--kitti-probe", action="store_true", help="instead: the real-image probe on a KITTI root with several drives "
                    "(../shared/data/kitti): a LiDAR map of every frame, each camera image asks which drive it comes from")
    sp.add_argument("--depth", action="store_true", help="instead: the image's pseudo-depth against the projected LiDAR "
                    "(AbsRel, RMSE, delta<1.25 on pixels with a return <= 80 m), per drive and pooled, with the per-row-median "
                    "baseline; every drive of each --data root with scans and images (or --sequences), poses not needed")
    sp.add_argument("--stride", type=int, default=1, metavar="N", help="--depth: every N-th frame of each drive (default 1: all)")
    sp.add_argument("--sensitivity", action="store_true", help="--depth: also how far the depth branch's descriptor moves "
                    "when its input depth is wrong (scaled, noisy, far range clamped, the image's pseudo-depth in part or all of it)")
    sp.add_argument("--track", action="store_true", help="instead: each drive replayed frame by frame against a map of its "
                    "first part (--map-fraction): the tracking filter, with and without odometry, beside the single-frame top-1")
    sp.add_argument("--real-folds", metavar="FOLDS", help="instead: each leave-one-set-out fold's model (--fold-runs) on its "
                    "held-out real frames (pseudo-depth, 'which drive' recall) beside --model (default: the shipped one)")
    sp.add_argument("--fold-runs", metavar="PATTERN", help="--real-folds: model path with {fold}, e.g. runs/real-lite0-{fold}/model")
    sp.add_argument("--map-fraction", type=float, default=0.375, help="--track: the map holds this first share of the drive (default 0.375)")
    sp.add_argument("--visual-odometry", action="store_true", help="--track: also the filter with monocular visual odometry "
                    "from the drive's camera images instead of odometry (image and fused modes; key track_visual; ~45 ms a frame, "
                    "kept in --cache)")
    sp.add_argument("--track-k", type=int, default=10, help="--track: hits per query the filter observes (default 10)")
    sp.add_argument("--min-confidence", type=float, default=None, metavar="C",
                    help="--track: publish the belief's fixes from this confidence in every mode (default: per mode, as the "
                         "calibration measured; image-only: never)")
    sp.add_argument("--verify-every", type=int, default=1, metavar="N", help="--track --verify: the filter sees verification "
                    "on every N-th frame only, as a node whose verifier keeps up with 1 frame in N (default 1: every frame)")
    sp.add_argument("--verify", action="store_true", help="--track: GICP-verify the best 6 hits of LiDAR and fused queries against "
                    "the map's scans, as the node does with a map built with --scans (slow: ~1 s a query off the map on 2 cores; "
                    "kept in --cache); published fixes then need a recent verification that agrees")
    sp.add_argument("--calibrate", metavar="FILE", help="--track: fit the filter's observation model on these drives (validation "
                    "towns only) and write it to FILE")
    sp.add_argument("--calibration", metavar="FILE", help="--track: the observation model (default: the model's own, NAME.tracking.json)")
    sp.add_argument("--sequences", nargs="+", help="sequences to evaluate (default 00; --depth: every drive)")
    sp.add_argument("--protocol", action="append", choices=["cotemporal", "revisit"], help="protocol(s) (default both)")
    sp.add_argument("--mode", action="append", choices=["image", "lidar", "fused"], help="query mode(s) (default all)")
    sp.add_argument("--cache", help="keep the frame caches in this folder (default: a temporary one)")
    sp.add_argument("--plots", metavar="DIR", help="write Recall@N curves and top-1 match maps (PNG) here")
    sp.add_argument("--robustness", action="store_true", help="also run the robustness study (LiDAR 75/50/25%%, image noise)")
    sp.add_argument("--loop-closure", action="store_true",
                    help="instead: online loop closures over each drive (precision, recall, PR curve, relative-pose error; "
                         "with and without GICP verification)")
    sp.add_argument("--loop-min-score", type=float, default=0.5, help="--loop-closure: smallest candidate score (default 0.5)")
    sp.add_argument("--min-inlier-ratio", type=float, default=0.7, help="--loop-closure: GICP acceptance (default 0.7)")
    sp.add_argument("--consistency", type=int, default=1, help="--loop-closure: consecutive agreeing detections (default 1 = off)")
    sp.add_argument("--candidates", type=int, default=LoopConfig.candidates,
                    help=f"--loop-closure: candidates verified per query, best score first (default {LoopConfig.candidates})")
    sp.add_argument("--max-error-per-inlier", type=float, default=LoopConfig.max_error_per_inlier,
                    help=f"--loop-closure: GICP cost per inlier above which a registration is refused (default {LoopConfig.max_error_per_inlier})")
    sp.add_argument("--verified-only", action="store_true", help="--loop-closure: skip the run without verification")
    sp.add_argument("--views", type=int, nargs="+", default=[DEFAULT_VIEWS], metavar="K",
                    help=f"heading views a database place / keyframe (default {DEFAULT_VIEWS}); several K are compared in one run, "
                         "the first one's table on top")
    sp.add_argument("--reverse-offset", type=float, default=DEFAULT_REVERSE_OFFSET_M, metavar="M",
                    help=f"rear views are taken this far to the left of the scan (right-hand traffic; default {DEFAULT_REVERSE_OFFSET_M})")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("export", cmd_export, "ONNX export per query mode (and TensorRT engines where TensorRT and a GPU are present)")
    sp.add_argument("--model", help="model artifact; default: the shipped model")
    sp.add_argument("--mode", action="append", choices=["image", "lidar", "fused"], help="mode(s) to export (default all)")
    sp.add_argument("--no-tensorrt", action="store_true", help="do not try to build TensorRT engines")
    _add_image_domain(sp, "the image graph's: ")

    sp = add("build-map", cmd_build_map, "encode a mapping drive (LiDAR only) into a place map")
    sp.add_argument("--model", help="model artifact; default: the shipped model")
    sp.add_argument("--data", required=True, help="KITTI-layout root")
    sp.add_argument("--sequence", default="00")
    sp.add_argument("--out", required=True, help="map directory to write")
    sp.add_argument("--frames", type=int, nargs=2, metavar=("START", "END"), help="map frames START <= i < END only")
    sp.add_argument("--index", choices=["flat", "ivf", "ivfpq", "hnsw"], default="flat", help="FAISS index (default exact)")
    sp.add_argument("--views", type=int, default=DEFAULT_VIEWS,
                    help=f"heading views a place (its scan turned by 360/K steps): found from any direction; 1 = camera view only (default {DEFAULT_VIEWS})")
    sp.add_argument("--reverse-offset", type=float, default=DEFAULT_REVERSE_OFFSET_M, metavar="M",
                    help=f"rear views are taken this far to the left of the scan, where the drive the other way passes "
                         f"(right-hand traffic; negative for left-hand; default {DEFAULT_REVERSE_OFFSET_M})")
    sp.add_argument("--scans", action="store_true",
                    help="store each place's scan (downsampled) so the node verifies relocalisation by GICP and publishes a metric pose")
    sp.add_argument("--scan-voxel", type=float, default=0.5, help="voxel (m) of the stored scans (default 0.5)")
    sp.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt", "auto"], default="auto")
    sp.add_argument("--batch", type=int, default=16)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("query", cmd_query, "top-k places of one frame against a map")
    sp.add_argument("--map", required=True, help="map directory")
    sp.add_argument("--model", help="model artifact; default: the shipped model")
    sp.add_argument("--data", required=True, help="KITTI-layout root of the query frame")
    sp.add_argument("--sequence", default="00")
    sp.add_argument("--frame", type=int, required=True)
    sp.add_argument("--k", type=int, default=5)
    sp.add_argument("--mode", choices=["image", "lidar", "fused"], default="image")
    sp.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt", "auto"], default="auto")
    _add_image_domain(sp)

    sp = add("replay", cmd_replay, "publish a KITTI-layout sequence or a ROS 1 / ROS 2 bag on ROS 2 topics (image, camera_info, points)")
    sp.add_argument("--data", help="KITTI-layout root (holds dataset/)")
    sp.add_argument("--sequence", default="00", help="sequence of --data (default 00)")
    sp.add_argument("--frames", type=int, nargs=2, metavar=("START", "END"), help="frames START <= i < END of --data only")
    sp.add_argument("--bag", help="ROS 1 .bag, or ROS 2 bag folder / .mcap / .db3")
    sp.add_argument("--bag-image-topic", help="image topic in the bag (default: kitti2bag's, else the only Image topic)")
    sp.add_argument("--bag-camera-info-topic", help="camera_info topic in the bag (default as above)")
    sp.add_argument("--bag-points-topic", help="point-cloud topic in the bag (default: kitti2bag's, else the only PointCloud2 topic)")
    sp.add_argument("--image-topic", help="published image topic (default image)")
    sp.add_argument("--camera-info-topic", help="published camera_info topic (default camera_info)")
    sp.add_argument("--points-topic", help="published point-cloud topic (default points)")
    sp.add_argument("--rate", type=float, default=1.0, help="times real time (default 1; 0 = no pacing)")
    sp.add_argument("--lockstep", metavar="TOPIC", help="publish the next frame when TOPIC (e.g. /attnlink/match) answers: as fast as the node consumes")
    sp.add_argument("--lockstep-timeout", type=float, default=2.0, metavar="S",
                    help="with --lockstep: publish the next frame anyway after S seconds without the answer (default 2)")
    sp.add_argument("--loop", action="store_true", help="start over at the end (Ctrl-C stops)")
    sp.add_argument("--clock", action="store_true", help="publish /clock with the data's time (for use_sim_time)")
    sp.add_argument("--best-effort", action="store_true", help="best-effort publishers (default reliable, which best-effort subscribers accept)")
    sp.add_argument("--wait-subscribers", type=float, default=5.0, help="wait up to this many seconds for a points subscriber (default 5)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("to-bag", cmd_to_bag, "write a KITTI odometry sequence as a ROS 2 bag (image, camera_info, points)")
    sp.add_argument("--data", required=True, help="KITTI-layout root")
    sp.add_argument("--sequence", default="00")
    sp.add_argument("--frames", type=int, nargs=2, metavar=("START", "END"), help="frames START <= i < END only")
    sp.add_argument("--out", required=True, help="bag folder to write (must not exist)")
    sp.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("demo", cmd_demo, "the main job on the embedded default: a drive's first half as a map, its second half replayed through the ROS 2 node")
    sp.add_argument("--out", default="out/demo", help="working folder (default out/demo)")
    sp.add_argument("--data", help="use this KITTI folder instead of a synthetic drive")
    sp.add_argument("--sequence", default="00", help="sequence of --data (default 00)")
    sp.add_argument("--frames", type=int, default=1200,
                    help="frames of the synthetic drive (default 1200: map = its first 3/8, queries = its second half, with reverse revisits)")
    sp.add_argument("--views", type=int, default=DEFAULT_VIEWS, help=f"heading views a map place (default {DEFAULT_VIEWS}; 1 = camera view only)")
    sp.add_argument("--seed", type=int, default=7, help="seed of the synthetic town (default 7)")
    sp.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    sp.add_argument("--model", help="model artifact; default: the shipped model")
    sp.add_argument("--mode", choices=["image", "lidar", "fused"], default="fused", help="query mode of the node (default fused)")
    sp.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt", "auto"], default="auto")
    sp.add_argument("--rate", type=float, default=0.0, help="replay at this multiple of real time (default 0: as fast as the node answers)")
    sp.add_argument("--print-every", type=int, default=10, help="print every Nth live hit (default 10)")
    sp.add_argument("--no-scans", action="store_true", help="a map without stored scans: no GICP verification (the tracking filter "
                    "then publishes on descriptor evidence alone)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.fn(args)
        _write_json(args.json, result)
    except AttnLinkError as exc:
        print(f"attnlink {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"attnlink {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
