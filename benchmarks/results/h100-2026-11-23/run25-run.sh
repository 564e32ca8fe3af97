#!/usr/bin/env bash
# Session 4, device run 6 (run 25 overall): Performer's row-max pass in the transposed form against the old one,
# and the Performer GPU tests. Run from the repository root on the device, $OUT set, wheels in .whl/.
mkdir -p $OUT/results; python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
(timeout 60 python3 benchmarks/results/h100-2026-11-23/run25-rowmax_time.py 2>&1 | grep -v -i warn | tee $OUT/results/rowmax.log)
timeout 100 python3 -m pytest -o addopts="" -n 8 -m gpu -q -rfEs -p no:cacheprovider tests/test_performer.py > $OUT/results/gpu-tests.log 2>&1
