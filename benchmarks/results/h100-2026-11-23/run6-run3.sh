#!/usr/bin/env bash
# GPU run 3 of session 2 (run 6 overall): GPU tests of the changed kernels, tile/loop sweeps of SWA and Based,
# holographic with approximate trig, delta-rule version bisect, the foundation benchmark with first calls,
# HoloTransformer claims on the GPU.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run6 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$R/run.log" 2>&1 && export PYTHONPATH=/tmp/site
step gpu-tests 80 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_sliding_window_attention.py tests/test_based.py tests/test_holographic.py tests/test_softmax_attention.py
tail -n 2 "$R/gpu-tests.log" | tee -a "$R/run.log"
step fast-swa 55 python3 -m fast.sliding_window_attention
step fast-based 55 python3 -m fast.based
step fast-holographic 40 python3 -m fast.holographic
step dn-bisect 45 python3 .scratch/dn_bisect.py HEAD 27c9d9b cd07474 6d6e4e1 f3c7d36 aad50c3 826beb4
COMMON="--tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd --reps 10 --warmup 3 --max-case-s 2 --case-timeout-s 40 --no-plots"
step bench-fast 75 python3 -m benchmarks --methods softmax_attention linear_attention --T 8192 --causal yes --impls fast sdpa $COMMON --first-call-impls fast --first-call-timeout-s 25 --budget-s 68 --out "$R" --name h100-foundation
step bench-zc 60 python3 -m benchmarks --methods linear_attention --T 8192 --causal yes --impls fast zoo-compile $COMMON --first-call-impls --budget-s 55 --out "$R" --name h100-zoo-compile
step holo-claims 65 python3 -m benchmarks.holo_claims --device cuda --out "$R"
find "$R" -name "*.pt" -delete
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
cp "$R/run.log" "$OUT/"
