"""Where a GPU stage runs its models: the GPU `mmablate.gpu.claim()` pinned the process to (seen
as ``cuda``/cuda:0 after it sets ``CUDA_VISIBLE_DEVICES``), else the CPU."""
from __future__ import annotations


def torch_device() -> str:
    """``cuda`` when a GPU is visible (the one cli.main claimed), else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def module_device(model):
    """The device of a module's first parameter (the CPU for one without parameters)."""
    import torch

    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")
