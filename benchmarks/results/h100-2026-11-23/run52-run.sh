#!/bin/bash
# run 52 (session 13): the final defaults (HALF_RECORDS on, WALK_TILE (64, 4, 2), split walk):
# GPU tests (HRC-LA, FAVOR+, training), the split-walk test on CUDA, the targets, first calls.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
fc() { local name=$1; shift; env PYTHONPATH=/tmp/site TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 60 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc hrc_la-fwdbwd --method hrc_la --B 4 --T 8192 --H 16 --D 64 --causal 1 --direction fwdbwd
fc hrc_la-fwd --method hrc_la --B 4 --T 8192 --H 16 --D 64 --causal 1 --direction fwd
grep -E "^== |FIRST_CALL|first|compiles:" $R/first.log | head -20
timeout 200 python3 -m benchmarks.hrc_seed --targets --out $R/targets 2>&1 | grep -v -i warn | tail -16 | tee $R/targets.log
PYTHONPATH=/tmp/site timeout -s INT 200 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_hrc_la.py tests/test_performer.py tests/test_train.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -12 | tee $R/gpu-tests.log
PYTHONPATH=/tmp/site timeout -s INT 60 python3 -m pytest -o addopts="" -q -rfEs -p no:cacheprovider tests/test_hrc_la.py -k split_walk 2>&1 | tail -3 | tee $R/split-test.log
ls $R
