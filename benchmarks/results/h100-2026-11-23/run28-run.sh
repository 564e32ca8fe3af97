#!/bin/bash
# run 28: delta family after the per-kernel tiles, check_decay and NH; step-4 K slices; first calls; GPU tests
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
fc() { local name=$1; shift; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc deltanet-fwdbwd --method deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc gated_deltanet-fwdbwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc gated_deltanet-fwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc deltaproduct-fwdbwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltaproduct-fwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
grep -E "^== |FIRST_CALL" $R/first.log
for case in delta gated dp2; do timeout 120 python3 .scratch/delta_tiles.py $case ops 2>&1 | grep -v -i warn; done | tee $R/ops.log
for case in delta gated; do timeout 150 python3 .scratch/delta_tiles.py $case dqkw_bks 2>&1 | grep -v -i warn; done | tee $R/bks.log
timeout 240 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py > $R/gpu-tests.log 2>&1
tail -n 8 $R/gpu-tests.log
tar -czf $OUT/results.tar.gz -C $OUT results
