#!/bin/bash
# run 30 (session 5's last): first calls of the delta family after the _spec fix; the delta family's ops at the
# final tiles; HRC-LA parallel backward round 2 (one process a variant); GPU tests of the changed files
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; git log --oneline -1; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
fc() { local name=$1; shift; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc deltanet-fwdbwd --method deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltanet-fwd --method deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc gated_deltanet-fwdbwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc gated_deltanet-fwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc deltaproduct-fwdbwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltaproduct-fwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc hrc_la-fwdbwd --method hrc_la --B 4 --T 8192 --H 16 --D 64 --causal 1 --direction fwdbwd
grep -E "^== |FIRST_CALL|compiles:" $R/first.log
for case in delta gated dp2; do timeout 90 python3 .scratch/delta_tiles.py $case ops 2>&1 | grep -v -i warn; done | tee $R/ops.log
timeout 150 python3 .scratch/hrc_bwd_sweep2.py 2>&1 | grep -v -i warn | tee $R/hrc-bwd2.log
timeout 220 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_hrc_la.py > $R/gpu-tests.log 2>&1
tail -n 8 $R/gpu-tests.log
tar -czf $OUT/results.tar.gz -C $OUT results
