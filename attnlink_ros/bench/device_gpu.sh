#!/bin/bash
# What a lent GPU session runs (the `device` tool; no TensorRT or faiss there, PyTorch with CUDA),
# from the repository root (the Python package lives in attnlink_ros/ since session 7).
#   attnlink_ros/bench/device_gpu.sh checks        CUDA tests, encoder and search benchmarks -> $OUT
#   attnlink_ros/bench/device_gpu.sh towns         synthetic towns of the lite model (16 workers)
#   attnlink_ros/bench/device_gpu.sh train CONFIG [STEPS]   train (resumes runs/<out>/last), results -> $OUT
#   attnlink_ros/bench/device_gpu.sh lease SECONDS CONFIG...  one lease, start to end within SECONDS:
#       towns $LEASE_TOWNS (1200 frames, camera effects; new towns stop at 40 % of the time; made ones kept), their
#       caches at each size of $LEASE_CACHE (default 128x512; LEASE_REAR=1: with rear views too), then every CONFIG trained side by side for the time left (train.time_budget_s);
#       each run's final model and log -> $OUT/<run>.tar, the lease's log -> $OUT/lease.log;
#       LEASE_KEEP_LAST=1: also its OUT/last in 15 MB parts ($OUT/<run>.last.tar.part-*). A run spanning
#       leases: `cat PARTS | tar x -C runs/<out>` here, carry runs/<out>/last, and set
#       train.time_budget_decay: false with train.steps the whole run's length
# KITTI frames for the CUDA projection test: copy ../shared/data/kitti's sequence 00 to .devkitti
# and carry it (ATTNLINK_KITTI).
set -u
export PYTHONPATH=$PWD/attnlink_ros PYTHONUNBUFFERED=1
OUT=${OUT:-out/device}
mkdir -p "$OUT"
case "$1" in
checks)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
  ATTNLINK_KITTI=$PWD/.devkitti python3 -m pytest -q -ra -p no:cacheprovider attnlink_ros/test/test_inference.py attnlink_ros/test/test_projection.py 2>&1 | tail -15
  python3 attnlink_ros/bench/bench_gpu_search.py --json "$OUT/bench_gpu_search.json"
  python3 attnlink_ros/bench/bench_model.py --repeats ${REPEATS:-50} --json "$OUT/bench_model_gpu.json"
  ;;
towns)
  for s in 101 102 103 ${EXTRA_TOWNS:-}; do test -f out/towns/s$s/done || { python3 -m attnlink_ros synth --out out/towns/s$s --seed $s --frames 1500 --workers 16 --quiet && touch out/towns/s$s/done; }; done
  for s in 201 301; do test -f out/towns/s$s/done || { python3 -m attnlink_ros synth --out out/towns/s$s --seed $s --frames 900 --workers 16 --quiet && touch out/towns/s$s/done; }; done
  # the training caches (128x512), one process per town
  for s in 101 102 103 ${EXTRA_TOWNS:-} 201; do
    python3 -c "from attnlink_ros.data.cache import build_cache as b; import os; p='out/cache/s$s''_00_128x512'; os.path.isfile(p + '/manifest.json') or b('out/towns/s$s', '00', p, 128, 512, progress=False)" &
  done
  wait
  ;;
train)
  cfg=$2
  run=$(python3 -c "import yaml,sys; print(yaml.safe_load(open('$cfg'))['train']['out'])")
  test -d "$OUT/last" && { mkdir -p "$run"; cp -r "$OUT/last" "$run/"; }
  timeout "${TRAIN_SECONDS:-100000}" python3 -m attnlink_ros train --config "$cfg" ${3:+--steps $3} --quiet
  mkdir -p "$OUT/last" && cp "$run"/last/* "$OUT/last/"
  cp "$run/log.jsonl" "$OUT/"
  for f in best final; do test -f "$run/$f.json" && cp "$run/$f.json" "$run/$f.safetensors" "$OUT/" 2>/dev/null; done
  ;;
lease)
  secs=$2; shift 2
  t0=$(date +%s)
  left() { echo $(( secs - ($(date +%s) - t0) )); }
  exec > >(tee "$OUT/lease.log") 2>&1
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available())"
  mkdir -p out/cache
  lease_cache() {  # TOWN HxW SUFFIX (_rv: with rear views); a cache already built is kept
    python3 -c "import os; from attnlink_ros.data.cache import build_cache as b; p='out/cache/s$1_00_$2$3'; os.path.isfile(p + '/manifest.json') or b('out/towns/s$1', '00', p, ${2%x*}, ${2#*x}, progress=False, threads=4, rear_view=bool('$3'))"
  }
  pids=()  # waited for by name: a bare `wait` would also wait for the tee above
  for s in ${LEASE_TOWNS:-1301 1302 1303 1304 1305 1306 1307 1308 1309 1310}; do
    [ $(( $(date +%s) - t0 )) -lt $(( secs * 2 / 5 )) ] || { echo "no time for town $s"; break; }
    test -f out/towns/s$s/done || {  # a warm machine's second call keeps what the first made
      python3 -m attnlink_ros synth --out out/towns/s$s --seed $s --frames ${LEASE_FRAMES:-1200} --workers 16 --quiet \
        --camera-effects --scene-variety || exit 1
      touch out/towns/s$s/done; }
    for hw in ${LEASE_CACHE:-128x512}; do  # the configs' data.cache_size (one already built is kept)
      lease_cache $s $hw "" &
      pids+=($!)
      if [ -n "${LEASE_REAR:-}" ]; then  # the caches with rear views too (train.rear_view_share)
        lease_cache $s $hw _rv &
        pids+=($!)
      fi
    done
    echo "town $s at $(( $(date +%s) - t0 )) s"
  done
  wait "${pids[@]}"
  echo "caches at $(( $(date +%s) - t0 )) s"
  for cfg in "$@"; do  # the towns made: the configs' lists cut to them; the time left: their budget
    run=$(basename "$cfg" .yaml)
    python3 - "$cfg" "$run" "$(( $(left) - 75 ))" <<'PY'
import os, sys, yaml
cfg, run, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = yaml.safe_load(open(cfg))
c["data"]["train"] = [d for d in c["data"]["train"] if os.path.isfile(os.path.join(d["root"], "done"))]
c["train"]["time_budget_s"] = budget
yaml.safe_dump(c, open(f"out/{run}.yaml", "w"))
print(run, len(c["data"]["train"]), "towns,", budget, "s")
PY
    timeout $(( $(left) - 15 )) python3 -m attnlink_ros train --config "out/$run.yaml" --quiet > "out/$run.train.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  for cfg in "$@"; do
    run=$(basename "$cfg" .yaml); dir=$(python3 -c "import yaml; print(yaml.safe_load(open('out/$run.yaml'))['train']['out'])")
    tail -3 "out/$run.train.log"; mkdir -p "$dir"; cp "out/$run.yaml" "out/$run.train.log" "$dir/"
    files="log.jsonl $run.yaml $run.train.log"; [ -f "$dir/final.json" ] && files="$files final.json final.safetensors" || files="$files last"
    tar cf "$OUT/$run.tar" -C "$dir" $files
    if [ -n "${LEASE_KEEP_LAST:-}" ]; then  # the resumable state (optimizer too), in parts under the 16 MB a file
      tar cf - -C "$dir" last | split -b 15m - "$OUT/$run.last.tar.part-"
    fi
  done
  echo "end at $(( $(date +%s) - t0 )) s"
  ;;
esac
