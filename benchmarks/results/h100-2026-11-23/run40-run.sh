#!/bin/bash
# run 40 (session 10), trimmed to the device time left: the default g check timed; the GPU tests of the
# code not yet checked on a GPU (delta family, HyperAttention, linear attention).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
timeout 60 python3 .scratch/decay_check.py 2>&1 | grep -v -i warn | tee $R/decay-check.log
PYTHONPATH=/tmp/site timeout -s INT 150 python3 -m pytest -o addopts="" -n 12 -m gpu -q -rfEs -p no:cacheprovider tests/test_deltanet_fast.py tests/test_gated_deltanet_fast.py tests/test_deltaproduct_fast.py tests/test_deltanet.py tests/test_hyper_attention.py tests/test_linear_attention.py > $R/gpu-tests.log 2>&1
echo "exit $?" >> $R/gpu-tests.log; tail -n 22 $R/gpu-tests.log
