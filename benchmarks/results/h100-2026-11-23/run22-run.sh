#!/usr/bin/env bash
# Session 4, device run 3 (run 22 overall): HRC-LA round 3 (phase-3 tiles at 4 warps, bf16 records) and the
# issue's targets at the fastest configuration; first calls with the side-by-side compiles (HyperAttention causal,
# delta family); GPU tests of the changed files.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
START=$(date +%s)
log() { echo "[run22 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log --oneline -1; } > "$R/env.txt" 2>&1
step hrc-sweep3 120 python3 benchmarks/results/h100-2026-11-23/run22-hrc_sweep3.py
step hrc-targets 120 python3 -c "import sys, os, json; sys.path.insert(0, os.getcwd()); import fast.hrc_la as f; [setattr(f, k, tuple(v) if isinstance(v, list) else v) for k, v in json.load(open('$R/hrc_best.json')).items()]; print({k: getattr(f, k) for k in json.load(open('$R/hrc_best.json'))}); import benchmarks.hrc_seed as h; h.main(['--targets', '--out', '$R/hrc-best'])"
fc() { local name=$1; shift; log "first $name"; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 60 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc hyper-fwdbwd --method hyper_attention --B 1 --T 131072 --H 32 --D 64 --causal 1 --direction fwdbwd
fc hyper-fwd --method hyper_attention --B 1 --T 131072 --H 32 --D 64 --causal 1 --direction fwd
for m in deltanet gated_deltanet deltaproduct; do
  for d in fwd fwdbwd; do fc $m-$d --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction $d; done
done
fc hrc-fwd --method hrc_la --B 4 --T 8192 --H 16 --D 64 --causal 1 --direction fwd
step gpu-tests 240 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_hyper_attention.py tests/test_hrc_la.py tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
