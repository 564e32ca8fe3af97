#!/usr/bin/env bash
# Session 4, device run 2 (run 21 overall): GPU tests of HRC-LA, Performer and the delta family (new: state walk +
# phase-3 switches; parallel first-call compiles); the HRC-LA round-2 sweep; the delta family's first calls.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
START=$(date +%s)
log() { echo "[run21 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
step hrc-sweep 150 python3 benchmarks/results/h100-2026-11-23/run21-hrc_sweep2.py
step gpu-tests 240 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hrc_la.py tests/test_performer.py tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
fc() { local name=$1; shift; log "$name"; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 60 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
for m in deltanet gated_deltanet deltaproduct; do
  for d in fwd fwdbwd; do fc $m-$d --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction $d; done
done
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
