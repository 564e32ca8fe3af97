#!/bin/bash
# one process per (case, kernel): a faulting configuration cannot poison the others
for case in delta gated; do
  for key in ops state_fwd state_rec state_bwd dqkw wy_bwd; do
    timeout 150 python3 .scratch/delta_tiles.py $case $key 2>&1 | grep -v -i "warn"
  done
done
timeout 60 python3 .scratch/delta_tiles.py dp2 ops 2>&1 | grep -v -i warn
