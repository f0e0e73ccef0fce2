"""Stage functions that fail in the ways real stages do (imported by stage processes in test_isolation.py)."""


def raise_cuda_oom():
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
