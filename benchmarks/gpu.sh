#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a short slot on a bare CUDA machine without network access.
# Installs only wheels carried in .whl/ (PyAV), then prints each table; results land in benchmarks/results/
# and, when $OUT is set (the device tool), are copied there.
#   bash benchmarks/gpu.sh                         # extract, e2e, GPU tests, compiled model, compile variants:
#                                                  ~9 min (the limits below add up to 585 s)
#   STEPS="model decode" bash benchmarks/gpu.sh    # a subset (steps: extract e2e tests compile diag model decode
#                                                  max-autotune)
set -u
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
out=${OUT:-benchmarks/results}
mkdir -p "$out" benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, av, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'av', av.__version__, 'cpus', os.cpu_count())"
collect() {  # results so far to $OUT: a later step that overruns the slot does not lose the earlier ones
  cat benchmarks/results/*_cuda*.md > "$out/tables.md" 2>/dev/null
  cat benchmarks/results/*.log > "$out/logs.txt" 2>/dev/null
  cat benchmarks/results/*_cuda*.json > "$out/results.json" 2>/dev/null
  true
}
step() {  # step SECONDS NAME COMMAND...: run with a time limit, keep the log, never stop the script
  local limit=$1 name=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "benchmarks/results/$name.log" 2>&1
  echo "--- $name exit $? after $((SECONDS - t0)) s"
  grep -vE "Warning|warn\(|^\s*$" "benchmarks/results/$name.log" | tail -n 30
  collect
}
# Ordered so that what matters most comes first: a slot that ends early still returns the finished tables.
for s in ${STEPS:-extract e2e tests compile diag}; do
  case $s in
    extract) step 75 extract python3 benchmarks/bench_extract.py --device cuda --full-size --videos 384 \
      --frames 190 --gen-processes 14 --batch-size 128 --workers ${EXTRACT_WORKERS:-14} ;;
    e2e) step 250 e2e python3 benchmarks/bench_e2e.py --device cuda --workers 14 --classes 101 ${E2E_ARGS:-} ;;
    model) step 120 model python3 benchmarks/bench_model.py --device cuda --full-size --paths naive,tf32,c3dnet \
      --warmup 1 --rounds 2 --min-seconds 1 ;;
    tests) step 40 gpu_tests python3 -m pytest -q -p no:cacheprovider tests/test_transforms.py \
      tests/test_engine_device.py tests/test_features.py -k "gpu or cuda or prefetch" ;;
    diag) step 120 model_diag python3 benchmarks/bench_model.py --device cuda --full-size \
      --paths compile-freeze,compile-bf16 --warmup 2 --rounds 1 --min-seconds 2 --name model_cuda_diag ;;
    compile) step 100 model_compile python3 benchmarks/bench_model.py --device cuda --full-size --paths compile \
      --warmup 2 --rounds 1 --min-seconds 2 --name model_cuda_compile ;;
    decode) step 60 decode python3 benchmarks/bench_decode.py ;;
    max-autotune) step 240 model_max python3 benchmarks/bench_model.py --device cuda --full-size \
      --paths compile-max --kinds inference --warmup 2 --rounds 1 --min-seconds 2 --name model_cuda_max ;;
  esac
done
collect
