#!/usr/bin/env bash
# Every GPU test and benchmark of issue 11, sized for a 15-minute device budget (H100/H200): two device runs,
#   bash scripts/gpu_check.sh env tests repro ddr        (at most ~8 minutes; usually ~4)
#   bash scripts/gpu_check.sh env train eval loader curves  (at most ~9 minutes; usually ~6)
#
# Prepare once on the development machine, in the repository root (both folders are git-ignored via
# .git/info/exclude and travel with the device tool's `carry`):
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 lpips==0.1.4
#   mkdir -p .gpu_data && cp -r ../shared/data/gopro_mini .gpu_data/
# Then, with the device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=600)
#
#   bash scripts/gpu_check.sh [STEP ...]     steps: env tests repro ddr train eval loader curves (default: all)
#   GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh ...   tiny CPU settings: checks the plumbing without a GPU
#
# Every step has its own time limit; a failing or slow step does not stop the others. Output goes to $OUT (the
# device tool's folder) or ./gpu_check_out, one file per step, plus summary.txt with each step's exit status.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_check_out}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=python3
if [ -d .whl ] && ! $PY -c "import open_clip" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"   # the package from this checkout, not installed
DATA=.gpu_data/gopro_mini
[ -d "$DATA" ] || DATA=../shared/data/gopro_mini

SMOKE="${GPU_CHECK_SMOKE:-}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env tests repro ddr train eval loader curves)
: > "$OUT_DIR/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT_DIR/NAME.txt, record the status
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT_DIR/$name.txt"
    timeout "$limit" "$@" >> "$OUT_DIR/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s :: $*" | tee -a "$OUT_DIR/summary.txt"
    tail -n 25 "$OUT_DIR/$name.txt"
}

for s in "${STEPS[@]}"; do
case $s in
env)
    step env 30 bash -c "date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; \
        $PY -c 'import torch, open_clip; print(torch.__version__, torch.cuda.is_available(), \
        torch.cuda.get_device_name() if torch.cuda.is_available() else \"cpu\", open_clip.__version__)'" ;;
tests)
    # CUDA-only tests (skipped on CPU); -rs lists what skipped and why
    step tests 150 $PY -m pytest -q -p no:cacheprovider -rs -x \
        tests/test_ddr_fast.py tests/test_train_fast.py tests/test_eval_fast.py -k "cuda or fused or tf32 or fp16" ;;
repro)
    if [ -n "$SMOKE" ]; then
        step repro 200 $PY scripts/repro_nafnetlocal_compile.py --device cpu --width 8 --size 32 --batch 1 --cases large
    else
        step repro 90 $PY scripts/repro_nafnetlocal_compile.py --cases block nafnet large --mix-order both
    fi ;;
ddr)
    if [ -n "$SMOKE" ]; then
        step ddr 200 $PY scripts/bench_ddr.py --device cpu --batches 1 --iters 1 --repeats 1 --warmup 1 \
            --modes eager compile --hd-batch 0
    else
        step ddr 140 $PY scripts/bench_ddr.py --batches 1 4 16 64 --iters 20 --repeats 3 --hd-batch 4 \
            --modes eager eager-bf16 compile reduce-overhead reduce-overhead-bf16
    fi ;;
train)
    if [ -n "$SMOKE" ]; then
        step train 300 $PY scripts/bench_train.py --cpu --small --size 32 --batch 2 --iters 2 --warmup 1 --compare \
            --amp bf16 --channels-last
    else
        # fast = bf16 + TF32 + fused AdamW + compile (NAFNetLocal: the mix-order work-around applies on torch < 2.14)
        step train_nafnet_b4 90 $PY scripts/bench_train.py --compare --iters 30 --warmup 8
        step train_nafnet_b16 70 $PY scripts/bench_train.py --compare --iters 15 --warmup 6 --batch 16
        step train_restormer 90 $PY scripts/bench_train.py --compare --iters 20 --warmup 6 --arch restormer --batch 8 --size 128
        step train_ddr_share 60 $PY scripts/bench_train.py --ddr both --amp bf16 --tf32 --fused --iters 30 --warmup 8
    fi ;;
eval)
    if [ -n "$SMOKE" ]; then
        step eval 300 $PY scripts/bench_eval.py --device cpu --arch nafnet --size 96x64 --repeats 1 --warmup 1 \
            --data "$DATA/train" --max-images 2 --e2e-arch identity --e2e-metrics psnr
    else
        step eval 60 $PY scripts/bench_eval.py --amp bf16 --repeats 3 --data "$DATA/train" --e2e-metrics psnr --e2e-twice
    fi ;;
loader)
    if [ -n "$SMOKE" ]; then
        step loader 200 $PY scripts/bench_train.py --cpu --small --size 32 --batch 2 --iters 3 --warmup 1 \
            --real-data "$DATA/train" --workers 1
    else
        step loader 60 $PY scripts/bench_train.py --real-data "$DATA/train" --workers 8 --amp bf16 --tf32 --fused \
            --iters 40 --warmup 8
    fi ;;
curves)
    if [ -n "$SMOKE" ]; then
        step curves 300 $PY scripts/bench_train.py --cpu --small --size 32 --batch 2 --curves 4 --out "$OUT_DIR/curves"
    else
        step curves 100 $PY scripts/bench_train.py --curves 300 --amp bf16 --tf32 --fused --out "$OUT_DIR/curves"
    fi ;;
*) echo "unknown step $s (env tests repro ddr train eval loader curves)"; exit 2 ;;
esac
done
echo "--- summary"; cat "$OUT_DIR/summary.txt"
