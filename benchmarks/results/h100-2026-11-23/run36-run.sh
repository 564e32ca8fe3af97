#!/bin/bash
# run 36 (session 7): the delta family after step 1's two-chunk programs (ungated): first calls, the
# public ops (run27-delta_tiles.py ops), GPU tests of the delta family, HyperAttention and HRC-LA
# (the files that use fast/_compile.py's dry runs), per-stage times (python -m fast.deltanet, no fla)
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; git log --oneline -1; git status --short; } > $R/env.txt 2>&1
fc() { local name=$1; shift; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
for m in deltanet gated_deltanet deltaproduct; do for d in fwdbwd fwd; do
  fc $m-$d --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction $d; done; done
grep -E "^== |FIRST_CALL|_chunk_wy_fwd_kernel" $R/first.log
for case in delta gated dp2; do timeout 80 python3 benchmarks/results/h100-2026-11-23/run27-delta_tiles.py $case ops 2>&1 | grep -v -i warn; done | tee $R/ops.log
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/site timeout 230 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py tests/test_hyper_attention.py tests/test_hrc_la.py > $R/gpu-tests.log 2>&1
echo "exit $?" >> $R/gpu-tests.log; tail -n 12 $R/gpu-tests.log
timeout 60 python3 -m fast.deltanet 2>&1 | grep -v -i warn | tee $R/fast-deltanet.log
