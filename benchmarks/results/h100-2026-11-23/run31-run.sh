#!/bin/bash
# run 31: HRC-LA fwd+bwd first call with its dry run; the two first-call tests on the GPU
R=$OUT/results; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py --method hrc_la --B 4 --T 8192 --H 16 --D 64 --causal 1 --direction fwdbwd --impl fast 2>&1 | grep -v -i warn | tee $R/first.log
timeout 90 python3 -m pytest -o addopts="" -q -m gpu -rfEs -p no:cacheprovider tests/test_deltanet_fast.py -k "dry_runs or first_forward" 2>&1 | tail -3 | tee $R/gpu-tests.log
