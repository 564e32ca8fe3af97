#!/bin/bash
# run 64 (session 17), call 2 of 2 on the same machine: issue 3's setup in one run beside fla 0.6.0
# (benchmarks harness: fast and fla, fwd and fwd+bwd, the fast ops' first calls in fresh processes),
# then the kernel-level timing of run 56's script at the default tiles.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/site python3 -c "import fla; print('fla', fla.__version__)" >> $R/env.txt 2>&1
D=benchmarks/results/h100-2026-11-23
PYTHONPATH=/tmp/site timeout 400 python3 -m benchmarks --methods deltanet gated_deltanet deltaproduct --impls fast fla --T 8192 --causal yes --tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd --reps 20 --warmup 3 --max-case-s 3 --case-timeout-s 120 --no-plots --first-call-impls fast --first-call-timeout-s 30 --budget-s 380 --out $R --name h100-delta-fla 2>&1 | grep -v -i warn | tail -40 > $R/bench.log
tail -30 $R/bench.log
timeout 150 python3 $D/run56-delta_wy.py new delta,gated,dp2 "" 2>&1 | grep -v -i warn | tee $R/delta-wy.log
echo "ended at $SECONDS s"
