#!/usr/bin/env bash
# One call on the GPU machine for every method: the GPU tests of the files named in GPU_TESTS,
# then the side-by-side benchmark at each issue's headline shapes, then each fast file's own
# per-stage benchmark where it has one. Everything goes to $OUT/results.tar.gz (the device tool
# returns at most 8 files) plus the summary tables beside it.
#
#   OUT=/some/dir GPU_TESTS="tests/test_a.py tests/test_b.py" bash benchmarks/gpu_all.sh
#
# Each step has its own time limit and runs whether or not the one before it failed.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT}"
R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[gpu_all $(( $(date +%s) - START ))s] $*" | tee -a "$R/gpu_all.log"; }
step() {  # step NAME LIMIT_S CMD...: run CMD with a time limit, output to $R/NAME.log
    local name=$1 limit=$2; shift 2
    log "$name (limit ${limit}s): $*"
    timeout -s INT -k 15 "$limit" "$@" > "$R/$name.log" 2>&1
    log "$name exit code $?"
}

{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$R/gpu_all.log" 2>&1 \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -c "import fla; print('fla', fla.__version__)" >> "$R/env.txt" 2>&1

# 1. GPU tests (the image has pytest-xdist but not nbmake: pyproject's addopts are replaced).
if [ -n "${GPU_TESTS:-}" ]; then
    # shellcheck disable=SC2086
    step gpu-tests "${GPU_TEST_S:-150}" python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider $GPU_TESTS
    tail -n 3 "$R/gpu-tests.log" | tee -a "$R/gpu_all.log"
fi

# 2. The benchmark at the headline shapes: B·T = 32768, H = 16, D = 128, bf16, T = 8192.
COMMON="--tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd --reps 10 --warmup 3 --max-case-s 2 --case-timeout-s 60 --first-call-timeout-s 60 --no-plots"
# shellcheck disable=SC2086
step bench-foundation "${BENCH1_S:-150}" python3 -m benchmarks --methods softmax_attention linear_attention \
    --T 8192 --causal yes --noncausal-T 8192 --first-call-impls fast $COMMON --budget-s $(( ${BENCH1_S:-150} - 20 )) --out "$R" --name h100-foundation
# shellcheck disable=SC2086
step bench-others "${BENCH2_S:-170}" python3 -m benchmarks --methods ${OTHER_METHODS:-deltanet gated_deltanet deltaproduct based sliding_window_attention sliding_window_attention_w512} \
    --T 8192 --causal yes --impls fast fla sdpa zoo-eager --first-call-impls fast $COMMON --budget-s $(( ${BENCH2_S:-170} - 20 )) --out "$R" --name h100-others

# 3. Per-stage benchmarks that live beside the kernels.
[ -n "${HYPER_S:-}" ] && step fast-hyper_attention "$HYPER_S" python3 -m fast.hyper_attention
[ -n "${HRC_S:-}" ] && step hrc-seed "$HRC_S" python3 -m benchmarks.hrc_seed --targets

log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
cp "$R"/*.md "$OUT"/ 2> /dev/null
grep -h -A 14 "^## Targets" "$R"/*.md 2> /dev/null
