"""The two input checks every fast op adds to its zoo twin's: the tensors sit where the kernels can
run (a CUDA device, or the CPU under Triton's interpreter), in a dtype the kernels' tl.dot takes.
Each op's own limits (head dims, chunk sizes, int32 offsets) stay in its file."""

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_device_and_dtype(x: torch.Tensor, where: str, interpret: bool, what: str = "q, k, v",
                           zoo: str = "the zoo's forms") -> None:
    """`where`: the op or module named in the message; `interpret`: the calling module's INTERPRET,
    read at the call (tests switch it); `what`: the inputs x stands for; `zoo`: where any float
    dtype, float64 included, is computed instead."""
    if x.device.type != "cuda" and not interpret:
        raise ValueError(f"{where} got tensors on {x.device}: pass CUDA tensors, or set TRITON_INTERPRET=1 "
                         f"before importing fast/ to run the kernels in Triton's interpreter")
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{what} must be float16, bfloat16 or float32 for the Triton kernels, got {x.dtype} "
                        f"({zoo} computes in any float dtype)")
