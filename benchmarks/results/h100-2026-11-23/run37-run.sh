#!/bin/bash
# run 37 (session 8): every GPU test on the committed code (e976c71): the delta family's final
# kernels, the fla fused_recurrent layer comparison and the fast HyperAttention no-NaN test had not
# run on a GPU since they changed (session 7).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/site timeout 540 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider --durations=10 tests > $R/gpu-tests.log 2>&1
echo "exit $?" >> $R/gpu-tests.log; tail -n 30 $R/gpu-tests.log
