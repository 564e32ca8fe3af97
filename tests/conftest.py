"""Test set-up shared by every method's tests.

- On a machine without CUDA, Triton kernels run through Triton's interpreter. The switch must be
  set before any `fast/` module is imported (Triton reads it when `@triton.jit` runs), so it
  lives here, at the top of the first file pytest imports.
- Hypothesis profiles: `dev` (few examples, for editing), `ci` (bounded, derandomised so a
  failure reproduces), `gpu` (more examples; the GPU is fast). `CI=true` selects `ci`;
  `HYPOTHESIS_PROFILE` overrides.
- `@pytest.mark.gpu` tests are skipped without CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=8, **_COMMON)
settings.register_profile("ci", max_examples=12, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("gpu", max_examples=40, **_COMMON)
_default = "ci" if os.environ.get("CI") else ("gpu" if torch.cuda.is_available() else "dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))

# One thread per pytest-xdist worker (workers already fill the cores); otherwise up to 4.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(4, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
