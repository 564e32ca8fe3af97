#!/bin/bash
# run 66 (prepared in session 18; sessions 18 and 19 found no device: NOT run yet), one call on an H100:
# 1. step 1's solve: fast.deltanet.SOLVE_BY_GATHER (the 16x16 blocks read back from memory, the row of X
#    by one shuffle) against the default solve from registers, alternating, each the whole ops' fwd and
#    fwd+bwd and kernel times (run56-delta_wy.py, B 4, T 8192, H 16, D 128, bf16; dp2 4096 tokens x 2),
#    outputs and gradients compared (run66-solve_outputs.py; bit-identical under the interpreter), and
#    the bit-for-bit tests of the switches on the GPU (SOLVE_BY_GATHER, SAVE_INTERMEDIATES);
# 2. run 65's first calls (fresh processes, empty caches): the inference forward's own dry run of session
#    17, never measured; one forward with SOLVE_BY_GATHER;
# 3. the delta family's GPU tests in the time left.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
left() { local s=$(( $1 - SECONDS )); echo $(( s > 1 ? s : 1 )); }
M=${RUN66_METHODS:-delta,gated,dp2}  # the A/B's ops (a shorter call: RUN66_METHODS=delta,gated)
ab() { RUN56_SAVE=/tmp/run66_$1.pt FD_SET=$2 timeout $3 python3 $D/run56-delta_wy.py $1 $M "" 2>&1 | grep -v -i warn | tee -a $R/solve-ab.log; }
ab registers "" 170; ab gather SOLVE_BY_GATHER=1 110  # the first run also computes the fp32 references
python3 $D/run66-solve_outputs.py /tmp/run66_gather.pt /tmp/run66_registers.pt 2>&1 | grep -v -i warn | tee $R/solve-outputs.log
PYTHONPATH=/tmp/site timeout -s INT 90 python3 -m pytest -o addopts="" -n 4 -q -rfE --tb=short -p no:cacheprovider tests/test_deltanet_fast.py -k bit_for_bit 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -20 > $R/bit-tests.log
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
