#!/bin/bash
# run 67 (prepared in session 21; NOT run: that session's device loans were paused), one call on an H100: 1. the first call and steady per-token latency of the
# delta family's recurrent (decode) ops, never measured before (run67-decode_first.py); 2. run 66's
# two slowest chunk-op first calls again (a second sample, at the defaults run 66 kept).
R=$OUT/results; mkdir -p $R; export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > $R/env.txt 2>&1
D=benchmarks/results/h100-2026-11-23
fresh() { env TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout -s INT -k 5 60 "$@"; }
for m in deltanet gated_deltanet deltaproduct; do fresh python3 $D/run67-decode_first.py $m 2>&1 | grep -v -i warn | tee -a $R/decode.log; done
for md in "gated_deltanet fwd" "deltaproduct fwdbwd"; do read m d <<< "$md"
  fresh python3 $D/run20-first_diag.py --method $m --impl fast --B 4 --T 8192 --H 16 --D 128 --causal 1 --direction $d >> $R/first.log 2>&1
  echo "== $m $d rc $?" >> $R/first.log; done
grep -E "^== |FIRST_CALL|compiles:" $R/first.log
echo "ended at $SECONDS s"
