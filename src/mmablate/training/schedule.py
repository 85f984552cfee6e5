"""Learning-rate schedules: linear warm-up then cosine decay to zero (as open_clip's training),
or linear warm-up then constant (``constant``: diffusers' ``constant_with_warmup``, Diffusion-DPO's
launchers)."""
from __future__ import annotations

import math


def check_warmup(block: dict, where: str, name: str) -> None:
    """Config check (no torch): the warm-up of block `name` must end before its last step."""
    from ..errors import ConfigError

    if block["warmup"] >= block["steps"] > 1:
        raise ConfigError(f"{where}.{name}.warmup: {block['warmup']} must be below {name}.steps "
                          f"{block['steps']}")


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_constant(step: int, warmup: int) -> float:
    """diffusers' ``get_constant_schedule_with_warmup``: step / warmup during warm-up, then 1."""
    return step / max(1.0, warmup) if step < warmup else 1.0


SCHEDULES = ("cosine", "constant")


def make_scheduler(optimizer, warmup: int, total: int, kind: str = "cosine"):
    import torch

    from ..errors import ConfigError

    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_constant(s, warmup))
    if kind != "cosine":
        raise ConfigError(f"lr_schedule {kind!r}: expected one of {list(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))


def param_groups(model, weight_decay: float):
    """AdamW groups as open_clip's training: no decay on gains, biases, norms and logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def set_threads(threads: int):
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
