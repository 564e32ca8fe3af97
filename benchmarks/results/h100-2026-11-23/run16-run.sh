#!/usr/bin/env bash
# Session 3, device run 8 (run 16 overall): the training tests' GPU cases (every method's fast layer in the model) after this
# session's kernel changes (HyperAttention, holographic, HRC-LA).
set -u
: "${OUT:?}"; R="$OUT/results"; mkdir -p "$R"
export PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$R/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$R/pip.log" 2>&1 && export PYTHONPATH=/tmp/site
timeout -s INT -k 10 200 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_train.py > "$R/gpu-tests-train.log" 2>&1; echo "exit $?" >> "$R/gpu-tests-train.log"
tar -czf "$OUT/results.tar.gz" -C "$OUT" results
