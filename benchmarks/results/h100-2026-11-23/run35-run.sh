#!/bin/bash
# run 35 (session 7), part 1: first calls of the session-6 code (delta family, HRC-LA); step 1 with
# several chunks a program (wy_loop.py); the delta family's ops; python -m fast.deltanet
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; git log --oneline -1; git status --short; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
fc() { local name=$1; shift; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc deltanet-fwdbwd --method deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltanet-fwd --method deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc gated_deltanet-fwdbwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc gated_deltanet-fwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc deltaproduct-fwdbwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltaproduct-fwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
fc hrc_la-fwdbwd --method hrc_la --B 4 --T 8192 --H 16 --D 64 --causal 1 --direction fwdbwd
grep -E "^== |FIRST_CALL|first|compiles:" $R/first.log | head -40
timeout 200 python3 .scratch/wy_loop.py 2>&1 | grep -v -i warn | tee $R/wy_loop.log  # committed as run35-wy_loop.py, .scratch/deltanet_cpp.py as run35-deltanet_cpp.py
for case in delta gated dp2; do timeout 90 python3 benchmarks/results/h100-2026-11-23/run27-delta_tiles.py $case ops 2>&1 | grep -v -i warn; done | tee $R/ops.log
timeout 120 python3 -m fast.deltanet 2>&1 | grep -v -i warn | tee $R/fast-deltanet.log
