#!/usr/bin/env bash
# Session 3, device run 6 (run 14 overall): GPU tests (holographic, HRC-LA, Performer); HRC-LA chunk-parallel sweep and the
# issue's targets (default and bf16 records); holographic target check at the committed defaults; first calls (fresh
# process, empty Triton/Inductor caches) of HyperAttention causal fwd+bwd and holographic fwd.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run14 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; sleep 1; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
step gpu-tests 150 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_holographic.py tests/test_hrc_la.py tests/test_performer.py
tail -n 3 "$R/gpu-tests.log" | tee -a "$R/run.log"
step holo-final 60 python3 .scratch/holo_final.py
step hrc-sweep 90 python3 .scratch/hrc_sweep.py
step hrc-targets 120 python3 -m benchmarks.hrc_seed --targets --out "$R/hrc-default"
step hrc-targets-half 60 python3 -c "import sys, os; sys.path.insert(0, os.getcwd()); import fast.hrc_la as f; f.HALF_RECORDS = True; import benchmarks.hrc_seed as h; h.targets_table.__defaults__; h.main(['--targets', '--out', '$R/hrc-half'])"
for spec in "hyper_attention --B 1 --T 131072 --H 32 --D 64 --causal 1 --direction fwdbwd" "holographic --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction fwd"; do
  name=first-$(echo $spec | cut -d' ' -f1)
  step $name 60 env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python3 -m benchmarks.first_call --method $spec --impl fast
done
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
