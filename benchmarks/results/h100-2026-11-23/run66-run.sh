#!/bin/bash
# run 66 (prepared in session 18, revised in session 20, run in session 21 at commit 11dc28e with
# RUN66_METHODS=delta,gated; both switches were removed after it: their logs are run66-*.log), one
# call on an H100:
# 1. the delta family's two forward levers (run66-fwd_ab.py, B 4, T 8192, H 16, D 128, bf16; dp2 4096 tokens
#    x 2): fast.deltanet.SOLVE_BY_GATHER (step 1's 16x16 blocks read back from memory, the row of X by one
#    shuffle) and R_IN_STEP2 (a forward without gradients forms R in step 2), alone and together, forward
#    times in two rounds, outputs against the default's; fwd+bwd and gradients with and without the gather;
#    then their tests on the GPU (SOLVE_BY_GATHER and SAVE_INTERMEDIATES bit for bit, R_IN_STEP2's outputs);
# 2. run 65's first calls (fresh processes, empty caches): the inference forward's own dry run of session
#    17, never measured; one forward with SOLVE_BY_GATHER;
# 3. the delta family's GPU tests in the time left.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
M=${RUN66_METHODS:-delta,gated,dp2}  # the A/B's ops (a shorter call: RUN66_METHODS=delta,gated)
timeout 300 python3 $D/run66-fwd_ab.py $M 2>&1 | grep -v -i warn | tee $R/fwd-ab.log
PYTHONPATH=/tmp/site timeout -s INT 90 python3 -m pytest -o addopts="" -n 4 -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py -k "bit_for_bit or step_2" 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -20 > $R/bit-tests.log
tail -2 $R/bit-tests.log
fc() { local name=$1; shift; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 $D/run65-first_old_new.py "$@" --impl fast --B 4 --T 8192 --H 16 --D 128 --causal 1 >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc "gated_deltanet fwd" new --method gated_deltanet --direction fwd  # run 64's 5.59 s
FD_SET=SOLVE_BY_GATHER=1 fc "gated_deltanet fwd, SOLVE_BY_GATHER" new --method gated_deltanet --direction fwd
for m in deltanet deltaproduct; do fc "$m fwd" new --method $m --direction fwd; done
for m in gated_deltanet deltaproduct deltanet; do fc "$m fwdbwd" new --method $m --direction fwdbwd; done
grep -E "^== |FIRST_CALL|compiles:" $R/first.log
PYTHONPATH=/tmp/site timeout -s INT $(left 585) python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -40 > $R/gpu-tests.log
tail -4 $R/gpu-tests.log
echo "ended at $SECONDS s"
