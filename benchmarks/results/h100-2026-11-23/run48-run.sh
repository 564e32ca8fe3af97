#!/bin/bash
# run 48 (session 13): HRC-LA forward with the division and the stabiliser in the kernels; GPU tests of HRC-LA and FAVOR+; the targets.
# Baseline: .scratch/fast_old holds fast/{__init__,_checks,_compile,_random_features,hrc_la,performer}.py of 1dedd13,
# its imports and op namespace renamed so both load in one process:
#   for f in ...; do git show 1dedd13:fast/$f.py > .scratch/fast_old/$f.py; done
#   sed -i "s/from fast\./from fast_old./; s/from fast import/from fast_old import/; s/\"zoo::/\"zoo_old::/g; s/f\"zoo::/f\"zoo_old::/g; s/torch\.ops\.zoo\./torch.ops.zoo_old./g" .scratch/fast_old/*.py
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
cat $R/env.txt
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 260 python3 benchmarks/results/h100-2026-11-23/run48-hrc_fused.py 2>&1 | grep -v -i warn | tee $R/hrc-fused.log
PYTHONPATH=/tmp/site timeout -s INT 150 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_hrc_la.py tests/test_performer.py 2>&1 | tail -25 | tee $R/gpu-tests.log
timeout 150 python3 -m benchmarks.hrc_seed --targets --out $R/targets 2>&1 | grep -v -i warn | tail -25 | tee $R/targets.log
ls $R
