#!/bin/bash
# run 42 (session 11): fast HRC-LA at K = V = M = 32 on the GPU: which variant is right (against the
# float64 zoo on the GPU and on the CPU), the records and outputs dumped for a CPU comparison;
# memcheck on the accurate-trig case that faulted in run 41; beside it, the new GPU test cases.
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1
( PYTHONPATH=/tmp/site timeout -s INT 230 python3 -m pytest -o addopts="" -n 6 -q -rfEs -p no:cacheprovider \
  tests/test_hrc_la.py::test_fast_small_head_dims_run_and_equal_zoo_in_bf16_on_gpu \
  "tests/test_hrc_la.py::test_fast_gradients_equal_zoo_in_bf16_on_gpu[300-True-0.35]" \
  "tests/test_performer.py::test_fast_gradients_equal_zoo_in_bf16_on_gpu[300-True-0.35]" \
  tests/test_hyper_attention.py::test_no_nan_for_any_length_in_half_and_single_precision \
  "tests/test_train.py::test_fast_impl_gives_the_zoo_model_on_a_gpu[hrc_la]" > $R/tests.log 2>&1; echo "exit $?" >> $R/tests.log ) &
OUT=$R timeout 200 python3 .scratch/hrc_diag.py 2>&1 | grep -v -i warn | tee $R/hrc-diag.log
timeout 100 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --print-limit 6 python3 .scratch/hrc_iae.py '{"B": 2, "T": 100, "H": 2, "K": 32, "M": 32, "sw": {"FAST_TRIG": false}}' > $R/sanitizer-accurate-trig.log 2>&1
grep -v "Host Frame" $R/sanitizer-accurate-trig.log | head -30
wait; grep -v Warning $R/tests.log | tail -n 25
