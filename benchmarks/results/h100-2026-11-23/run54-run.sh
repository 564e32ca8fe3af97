#!/bin/bash
# run 54 (session 14): the delta family keeping the forward's intermediates (SAVE_INTERMEDIATES) against
# recomputing them; first calls; GPU tests of the delta family; HRC-LA phase 3 under a register cap.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; git log --oneline -1; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
for case in delta gated dp2; do timeout 100 python3 $D/run54-delta_save.py $case 2>&1 | grep -v -i warn; done | tee $R/delta-save.log
fc() { local name=$1; shift; env PYTHONPATH=/tmp/site TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 $D/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
for m in deltanet gated_deltanet deltaproduct; do
  fc $m-fwdbwd --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
  fc $m-fwd --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
done
grep -E "^== |FIRST_CALL|first|compiles:" $R/first.log | head -40
PYTHONPATH=/tmp/site timeout -s INT 150 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -12 | tee $R/gpu-tests.log
timeout 150 python3 $D/run54-hrc_maxnreg.py 2>&1 | grep -v -i warn | tee $R/hrc-maxnreg.log
PYTHONPATH=/tmp/site timeout 200 python3 -m fast.deltanet 2>&1 | grep -v -i warn | tee $R/fast-deltanet.log
ls $R
