#!/usr/bin/env bash
# GPU run 4 of session 2 (run 7 overall): GPU tests of the re-tiled kernels, the harness at the headline shape for
# every method with the committed tile rules (first calls included), delta-rule version bisect, kernel profile,
# the HoloTransformer needle rows.
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
START=$(date +%s)
log() { echo "[run7 $(( $(date +%s) - START ))s] $*" | tee -a "$R/run.log"; }
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s): $*"; timeout -s INT -k 10 "$limit" "$@" > "$R/$name.log" 2>&1; log "$name exit $?"; pkill -f benchmarks.first_call; sleep 1; }
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; git log -1 --format=%H; } > "$R/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$R/run.log" 2>&1 && export PYTHONPATH=/tmp/site
step gpu-tests 70 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_based.py tests/test_sliding_window_attention.py tests/test_holographic.py
tail -n 2 "$R/gpu-tests.log" | tee -a "$R/run.log"
COMMON="--T 8192 --causal yes --tokens 32768 --H 16 --D 128 --dtype bf16 --directions fwd fwdbwd --reps 10 --warmup 3 --max-case-s 2 --case-timeout-s 30 --no-plots"
step bench-foundation 80 python3 -m benchmarks --methods softmax_attention linear_attention --impls fast sdpa $COMMON --first-call-impls fast --first-call-timeout-s 20 --budget-s 72 --out "$R" --name h100-foundation
step bench-others 110 python3 -m benchmarks --methods sliding_window_attention sliding_window_attention_w512 based holographic deltanet gated_deltanet deltaproduct --impls fast $COMMON --first-call-impls fast --first-call-directions fwd --first-call-timeout-s 20 --budget-s 100 --out "$R" --name h100-others
step dn-bisect 40 python3 .scratch/dn_bisect.py HEAD 27c9d9b cd07474 6d6e4e1 f3c7d36 aad50c3 826beb4
step prof 30 python3 .scratch/prof.py
step holo-needle 40 python3 -m benchmarks.holo_claims --device cuda --tasks needle --out "$R/needle"
find "$R" -name "*.pt" -delete
log done
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
cp "$R/run.log" "$OUT/"
