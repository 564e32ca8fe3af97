"""Triton mirrors of the zoo: `fast/<name>.py` exposes the same ops and layer as `zoo/<name>.py`.

Import a method's module directly (`from fast import linear_attention`); nothing is imported
here, so a missing GPU or Triton only matters for the module you use. On a CPU, set
`TRITON_INTERPRET=1` before importing to run the kernels through Triton's interpreter.
"""
