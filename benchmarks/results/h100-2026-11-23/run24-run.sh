#!/usr/bin/env bash
# Session 4, device run 5 (run 24 overall): delta family fwd and fwd+bwd after sharing step 1's compiled kernel;
# first calls (HyperAttention's dry run with the backward op on its own thread; delta family); Performer's new
# two-launch causal forward sweep; GPU tests of the changed files.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
START=$(date +%s)
log() { echo "[run24 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
fc() { local name=$1; shift; log "first $name"; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 40 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc hyper-fwdbwd --method hyper_attention --B 1 --T 131072 --H 32 --D 64 --causal 1 --direction fwdbwd
fc deltanet-fwdbwd --method deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc gated_deltanet-fwdbwd --method gated_deltanet --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltaproduct-fwdbwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwdbwd
fc deltaproduct-fwd --method deltaproduct --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd
grep -E "^== |FIRST_CALL|compiles:" "$R/first.log" | tee -a "$R/run.log"
step delta-fb 90 python3 benchmarks/results/h100-2026-11-23/run24-delta_fb.py
cat "$R/delta-fb.log" | grep -v -i warn | tee -a "$R/run.log"
step perf-sweep 90 python3 benchmarks/results/h100-2026-11-23/run24-perf_sweep.py
step hrc-check 60 python3 benchmarks/results/h100-2026-11-23/run24-hrc_check.py
step gpu-tests 200 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hyper_attention.py tests/test_performer.py tests/test_hrc_la.py tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
