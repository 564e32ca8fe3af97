#!/usr/bin/env bash
# Session 4, device run 1 (run 20 overall): first-call breakdowns (HyperAttention causal fwd+bwd; delta family fwd and
# fwd+bwd), and whether Triton compiles overlap in threads on this machine.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
START=$(date +%s)
log() { echo "[run20 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
{ nvidia-smi; nproc; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); import triton.runtime._async_compile" ; } > "$R/env.txt" 2>&1
fc() { local name=$1; shift; log "$name"; env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 90 python3 benchmarks/results/h100-2026-11-23/run20-first_diag.py "$@" --impl fast >> "$R/first.log" 2>&1; echo "== $name rc $?" >> "$R/first.log"; }
fc hyper-fwdbwd --method hyper_attention --B 1 --T 131072 --H 32 --D 64 --causal 1 --direction fwdbwd
fc hyper-fwd --method hyper_attention --B 1 --T 131072 --H 32 --D 64 --causal 1 --direction fwd
for m in deltanet gated_deltanet deltaproduct; do
  for d in fwd fwdbwd; do fc $m-$d --method $m --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction $d; done
done
log par-compile
for mode in "seq" "par 3" "par 6"; do env TRITON_CACHE_DIR=$(mktemp -d) python3 benchmarks/results/h100-2026-11-23/run20-par_compile.py $mode >> "$R/par.log" 2>&1; done
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
