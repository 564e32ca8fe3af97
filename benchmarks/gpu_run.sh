#!/usr/bin/env bash
# One call on the GPU machine: the GPU tests, then the headline benchmark of the foundation issue
# (#2), everything written to $OUT. Each step runs even when the one before failed; the whole
# stays within 9 minutes (pytest is cut at GPU_TEST_S seconds, the benchmark gets what is left
# and writes partial results if its budget runs out).
#
#   OUT=/some/dir bash benchmarks/gpu_run.sh
#
# Knobs (environment): TOTAL_S (540), GPU_TEST_S (200; 0 skips the tests), GPU_TEST_WORKERS (6),
# HYPOTHESIS_PROFILE (ci),
# BENCH_ARGS / OTHERS_ARGS (the two benchmark steps' arguments; --budget-s and --out are added),
# OTHERS=0 (skip the step for methods beyond issue 2's).
#
# Optional: .whl/*.whl (e.g. fla-core, einops, packaging) are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives the logs and results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
TOTAL_S=${TOTAL_S:-540}        # 9 minutes for everything
GPU_TEST_S=${GPU_TEST_S:-200}  # the pytest step's share
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_run $(elapsed)s] $*" | tee -a "$OUT/gpu_run.log"; }

# 0. Environment ----------------------------------------------------------------------------------
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
    > "$OUT/env.txt" 2>&1 || log "environment probe failed (see env.txt)"
if compgen -G ".whl/*.whl" > /dev/null; then
    log "installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$OUT/gpu_run.log" 2>&1 \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || log "wheel install failed (see gpu_run.log)"
fi
python3 -c "import fla; print('fla', getattr(fla, '__version__', '?'))" >> "$OUT/env.txt" 2>&1 \
    || log "fla does not import: the fla rows will say why"

# 1. GPU tests ------------------------------------------------------------------------------------
# The ci hypothesis profile (12 examples, derandomised) so every file gets its turn in the time;
# SIGINT at the limit makes pytest stop and still print its summary.
if [ "$GPU_TEST_S" -gt 0 ]; then
    log "pytest -m gpu (limit ${GPU_TEST_S}s)"
    # pyproject's addopts name nbmake, which the GPU image lacks: drop them there (notebooks are CPU work).
    NB_OPTS=(); python3 -c "import nbmake" 2> /dev/null || NB_OPTS=(-o "addopts=")
    # Kernel compilation is CPU work: spread the test files over GPU_TEST_WORKERS processes
    # (pytest-xdist, present on the GPU image) sharing the one GPU.
    XDIST=(); python3 -c "import xdist" 2> /dev/null && [ "${GPU_TEST_WORKERS:-6}" -gt 1 ] && XDIST=(-n "${GPU_TEST_WORKERS:-6}" --dist loadfile)
    HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} timeout -s INT -k 20 "$GPU_TEST_S" \
        python3 -m pytest ${NB_OPTS[@]+"${NB_OPTS[@]}"} ${XDIST[@]+"${XDIST[@]}"} -m gpu -q -rfEs --durations=15 -p no:cacheprovider \
        --junitxml="$OUT/gpu-tests.xml" > "$OUT/gpu-tests.log" 2>&1
    log "pytest exit code $? (0 = all passed, 1 = failures, 5 = none collected, 2/130 = cut off)"
    tail -n 5 "$OUT/gpu-tests.log" | tee -a "$OUT/gpu_run.log"
else
    log "GPU tests skipped (GPU_TEST_S=0)"
fi

# 2. Benchmark: issue #2's headline ---------------------------------------------------------------
# softmax and linear attention at B·T = 32768 tokens, H = 16, D = 128, bf16, causal at T = 1k..16k
# plus non-causal at 8k, fwd and fwd+bwd. T = 8192 first: the targets are judged there, so a budget
# cut falls on the other lengths. Files: <device>-<date>.{json,md,png}.
SIZES="--T 8192 1024 2048 4096 16384 --tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd \
    --reps 10 --warmup 3 --max-case-s 2 --case-timeout-s 120 --first-call-timeout-s 120"
BENCH_ARGS=${BENCH_ARGS:-"--methods softmax_attention linear_attention --causal yes --noncausal-T 8192 $SIZES"}
LEFT=$(( TOTAL_S - $(elapsed) ))
BUDGET=$(( LEFT - 45 ))   # stop starting measurements here; leave time to write the table and plots
if [ "$BUDGET" -lt 30 ]; then BUDGET=30; fi
log "benchmark (budget ${BUDGET}s, hard stop $(( LEFT - 10 ))s)"
# shellcheck disable=SC2086
timeout -s TERM -k 15 $(( LEFT - 10 )) python3 -m benchmarks $BENCH_ARGS --budget-s "$BUDGET" --out "$OUT" \
    > "$OUT/bench.log" 2> "$OUT/bench.err"
log "benchmark exit code $?"
grep -h -A 12 "^## Targets" "$OUT"/*.md 2>/dev/null | tee -a "$OUT/gpu_run.log"
tail -c 1500 "$OUT/bench.err" | tr "\r" "\n" | tail -n 4 | tee -a "$OUT/gpu_run.log"

# 3. The other methods of benchmarks/specs.py, causal, in whatever time is left -----------------
# Files: <device>-<date>-others.{json,md,png}. OTHERS_ARGS overrides; OTHERS=0 skips.
LEFT=$(( TOTAL_S - $(elapsed) ))
OTHER_METHODS=$(python3 -c "from benchmarks.specs import all_specs; \
print(' '.join(n for n in all_specs() if n not in ('softmax_attention', 'linear_attention')))" 2> /dev/null)
if [ "${OTHERS:-1}" != 0 ] && [ -n "$OTHER_METHODS" ] && [ "$LEFT" -gt 100 ]; then
    OTHERS_ARGS=${OTHERS_ARGS:-"--methods $OTHER_METHODS --causal yes --first-call-impls fast fla $SIZES"}
    log "other methods: $OTHER_METHODS (budget $(( LEFT - 45 ))s)"
    # shellcheck disable=SC2086
    timeout -s TERM -k 15 $(( LEFT - 10 )) python3 -m benchmarks $OTHERS_ARGS --budget-s $(( LEFT - 45 )) \
        --out "$OUT" --suffix=-others > "$OUT/bench-others.log" 2> "$OUT/bench-others.err"
    log "other methods: exit code $?"
else
    log "other methods not run (${LEFT}s left; methods: ${OTHER_METHODS:-none})"
fi
log "done"
