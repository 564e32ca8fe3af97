#!/bin/bash
# run 56 (session 15): the delta family's steps 1 and 5 in column slices (registers that do not grow
# with K) against run 54's whole-K kernels, at several launch configurations; first calls; GPU tests
# of the delta family. .scratch/v/deltanet_head.py = `git show e7bab50:fast/deltanet.py` (run 54).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; git log --oneline -1 2>/dev/null; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
D=benchmarks/results/h100-2026-11-23
S="python3 $D/run56-delta_wy.py"
cp fast/deltanet.py /tmp/deltanet_new.py
cp .scratch/v/deltanet_head.py fast/deltanet.py
timeout 100 $S head delta,gated,dp2 2>&1 | grep -v -i warn | tee $R/delta-wy.log
cp /tmp/deltanet_new.py fast/deltanet.py
timeout 230 $S new delta,gated,dp2 "wy_bwd=32,8,3" "wy_bwd=32,4,3" "wy_bwd=16,4,2" "wy_bwd=16,4,2,168" "wy_bwd=16,4,3,168" "wy_bwd=16,8,2,128" "wy_bwd=64,8,3" 2>&1 | grep -v -i warn | tee -a $R/delta-wy.log
timeout 130 $S new delta,gated "wy=64,4,2" "wy=32,4,2" "wy=32,4,1" "wy=128,4,1" "wy=64,2,1" 2>&1 | grep -v -i warn | tee -a $R/delta-wy.log
PYTHONPATH=/tmp/site timeout -s INT 150 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py 2>&1 | grep -v "PytestBenchmarkWarning\|warner(" | tail -12 | tee $R/gpu-tests.log
fc() { local name=$1; shift; env PYTHONPATH=/tmp/site TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 $D/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
for m in deltanet gated_deltanet deltaproduct; do
  fc $m-fwdbwd --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
  fc $m-fwd --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
done
grep -E "^== |FIRST_CALL|first|compiles:" $R/first.log | head -40
ls $R
