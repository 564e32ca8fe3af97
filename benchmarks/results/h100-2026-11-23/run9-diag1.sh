#!/usr/bin/env bash
# Session 3, device run 1 (run 9 overall): GPU tests of the files refactored without a GPU run, per-kernel profiles
# (HyperAttention causal and not, HRC-LA, Performer, holographic, delta rule), zoo linear chunk compiled at L = 64/128/256,
# fast linear at K = 256/512, V = 64; ncu speed-of-light of the holographic and HRC-LA forward kernels.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run9 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; sleep 1; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$R/run.log" 2>&1 && export PYTHONPATH=/tmp/site
step gpu-tests 200 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_hrc_la.py tests/test_performer.py tests/test_deltanet.py tests/test_gated_deltanet.py tests/test_deltaproduct.py tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_softmax_attention.py tests/test_linear_attention.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
step prof-hyper 120 python3 .scratch/prof.py hyper
step prof-rest 150 python3 .scratch/prof.py hrc_la performer holographic deltanet zoolin
for n in holographic hrc_la; do
  step ncu-$n 40 ncu --clock-control none --section SpeedOfLight --section Occupancy --launch-skip 2 --launch-count 1 -k regex:"fwd" python3 .scratch/ncu_one.py $n
done
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
cp "$R/run.log" "$OUT/"
