#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a short slot on a bare CUDA machine without network access.
# Installs only wheels carried in .whl/ (PyAV, PyNvVideoCodec), then prints each table; results land in
# benchmarks/results/ and, when $OUT is set (the device tool), are copied there after every step.
# Before the device call, on the development machine: `bash benchmarks/prepare_gpu_run.sh` (the wheels, and
# UCF-101's encoding in benchmarks/xvid/: MEncoder XviD with packed B-frames); the call carries both folders.
#   bash benchmarks/gpu.sh          # default steps, in this order (the limits add up to 560 s):
#                                   #   extract (from XviD) 75, e2e (from XviD and frames) 230, nvdec 50,
#                                   #   compile (inference variants) 120, sweep (batch sizes) 60, tests 25
#   STEPS="extract nvdec" bash benchmarks/gpu.sh    # a subset; other steps: extract-mpeg4 model diag decode
#                                                   # max-autotune
#   DEVICE=cpu bash benchmarks/gpu.sh               # dry run of the same steps on a CPU at tiny sizes, tables
#                                                   # in a temporary folder (checks the script, measures nothing)
set -u
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null && [ "${DEVICE:-cuda}" != cpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}
XVID=${XVID:-benchmarks/xvid}
if [ "${DEVICE:-cuda}" = cpu ]; then  # tiny sizes; nothing here is a measurement
  export C3DNET_BENCH_RESULTS=${C3DNET_BENCH_RESULTS:-$(mktemp -d)}
  dev=cpu full="" ext="--videos 6 --workers 2 --batch-size 8 --decode-only-videos 2"
  e2e="--videos 12 --classes 3 --workers 2 --train-videos 12 --test-videos 6 --video-first"
  nvd="--files 2 --seconds 0.3 --jpeg-videos 1 --jpeg-passes 1" mdl="--iters 1 --min-seconds 0" b1=2 b2=4
else
  dev=cuda full=--full-size ext="--videos 384 --batch-size 128 --workers ${EXTRACT_WORKERS:-14}"
  e2e="--workers 14 --classes 101 --video-first" nvd="--seconds 1" mdl="--warmup 3 --min-seconds 2" b1=256 b2=128,512
fi
res=${C3DNET_BENCH_RESULTS:-benchmarks/results}
out=${OUT:-$res}
mkdir -p "$out" "$res"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
$PY -c "import torch, av, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'av', av.__version__, 'cpus', os.cpu_count())"
if [ -f "$XVID/manifest.json" ]; then
  src="--xvid $XVID"
else  # without the carried folder the video rows fall back to generated MPEG-4, which flatters decoding
  src=""
  echo "!!! $XVID/manifest.json missing: video rows use generated MPEG-4 (no B-frames), not UCF-101's XviD;" \
       "run benchmarks/prepare_gpu_run.sh here and carry $XVID"
fi
stamp=$(mktemp)  # tables written after this run started: not the committed ones of earlier runs
collect() {  # results so far to $OUT: a later step that overruns the slot does not lose the earlier ones
  if [ "$out" != "$res" ]; then
    find "$res" -maxdepth 1 -name '*_cuda*.md' -newer "$stamp" | sort | xargs -r cat > "$out/tables.md"
    find "$res" -maxdepth 1 -name '*.log' -newer "$stamp" | sort | xargs -r tail -n +1 > "$out/logs.txt"
    find "$res" -maxdepth 1 -name '*_cuda*.json' -newer "$stamp" | sort | xargs -r cat > "$out/results.json"
  fi
  true
}
step() {  # step SECONDS NAME COMMAND...: run with a time limit, keep the log, never stop the script
  local limit=$1 name=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$res/$name.log" 2>&1
  echo "--- $name exit $? after $((SECONDS - t0)) s"
  grep -vE "Warning|warn\(|^\s*$" "$res/$name.log" | tail -n 30
  collect
}
# Ordered so that what matters most comes first: a slot that ends early still returns the finished tables.
for s in ${STEPS:-extract e2e nvdec compile sweep tests}; do
  case $s in
    extract) step 75 extract $PY benchmarks/bench_extract.py --device $dev $full $src $ext --frames 190 \
      --gen-processes 14 ;;
    extract-mpeg4) step 75 extract_mpeg4 $PY benchmarks/bench_extract.py --device $dev $full $ext --frames 190 \
      --gen-processes 14 ;;
    e2e) step 230 e2e $PY benchmarks/bench_e2e.py --device $dev $src $e2e ${E2E_ARGS:-} ;;
    nvdec) step 50 nvdec $PY benchmarks/probe_nvdec.py --xvid "$XVID" $nvd ;;
    compile) step 120 model_compile $PY benchmarks/bench_model.py --device $dev $full $mdl --kinds inference \
      --paths compile,compile-graphs,compile-bf16-graphs --infer-batch $b1 --rounds 1 --name model_${dev}_compile ;;
    sweep) step 60 model_sweep $PY benchmarks/bench_model.py --device $dev $full $mdl --kinds inference \
      --paths compile-graphs --infer-batch $b2 --rounds 1 --name model_${dev}_sweep ;;
    tests) step 25 gpu_tests $PY -m pytest -q -p no:cacheprovider tests/test_transforms.py \
      tests/test_engine_device.py tests/test_features.py -k "gpu or cuda or prefetch" ;;
    model) step 120 model $PY benchmarks/bench_model.py --device $dev $full --paths naive,tf32,c3dnet \
      --warmup 1 --rounds 2 --min-seconds 1 ;;
    diag) step 120 model_diag $PY benchmarks/bench_model.py --device $dev $full $mdl \
      --paths compile-freeze,compile-bf16 --kinds inference --rounds 1 --name model_${dev}_diag ;;
    decode) step 60 decode $PY benchmarks/bench_decode.py ;;
    max-autotune) step 240 model_max $PY benchmarks/bench_model.py --device $dev $full $mdl \
      --paths compile-max --kinds inference --rounds 1 --name model_${dev}_max ;;
    *) echo "gpu.sh: unknown step '$s' (steps: extract e2e nvdec compile sweep tests extract-mpeg4 model diag decode" \
         "max-autotune)" ;;
  esac
done
collect
