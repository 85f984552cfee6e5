"""Diffusion-DPO's objective (Wallace et al., 2023), as pair ranking trains it.

For a pair (x_w, x_l) with prompt c, one timestep t and one noise ε shared by both images:

    L = −log σ( −β/2 · [ (‖ε − ε_θ(x_w,t)‖² − ‖ε − ε_θ(x_l,t)‖²)
                        − (‖ε − ε_ref(x_w,t)‖² − ‖ε − ε_ref(x_l,t)‖²) ] )

with ‖·‖² the mean over the latent's elements (as the authors' training script) and β = 5000
for SD-1.5 (the paper's). The reference model is the same UNet with its LoRA adapters disabled
(diffusers' UNet has no ``disable_adapter()`` context manager, so `adapters_off` wraps
``disable_adapters()``/``enable_adapters()``). With LoRA B initialised to zero the policy equals the
reference and the first loss is exactly log 2.

The loss of a batch is the mean over its pairs, so k micro-batches of B/k pairs whose losses are
each divided by k give the gradient of one batch of B — provided each pair keeps its own noise
and timestep: `draw_noise` draws them for a whole batch at once (`dpo_step_losses` takes the
slice of a micro-batch).
"""
from __future__ import annotations

import contextlib


def dpo_loss(model_w, model_l, ref_w, ref_l, beta: float):
    """Diffusion-DPO loss from per-sample squared errors [B]; returns (loss, implicit accuracy)."""
    import torch.nn.functional as F

    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    return -F.logsigmoid(inside).mean(), (inside > 0).float().mean()


def per_sample_mse(pred, target):
    return ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.ndim)))


@contextlib.contextmanager
def adapters_off(unet):
    """The reference model: the UNet with its adapters disabled (exactly the base model)."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def draw_noise(shape, num_train_timesteps: int, generator=None):
    """The noise ε [N, ...] and the timesteps t [N] of N pairs, drawn in this order (one draw
    per pair, shared by its winner and loser)."""
    import torch

    noise = torch.randn(shape, generator=generator)
    t = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    return noise, t


def dpo_step_losses(t2i, xw, xl, cond, beta: float, generator=None, noise=None, t=None,
                    policy=None):
    """One Diffusion-DPO loss: winner and loser share the noise and the timestep.

    Without ``noise``/``t`` they are drawn here from ``generator`` (`draw_noise`); pass them to
    compute a micro-batch of a batch whose draws were made up front. ``policy``: the module that
    runs the policy's forward (the harness's DDP-wrapped UNet; default ``t2i.unet``); the
    reference is always ``t2i.unet`` with its adapters off."""
    import torch

    sched = t2i.noise_scheduler()
    if noise is None or t is None:
        noise, t = draw_noise(xw.shape, sched.config.num_train_timesteps, generator)
    noise, t = noise.to(xw.device), t.to(xw.device)
    x = torch.cat([sched.add_noise(xw, noise, t), sched.add_noise(xl, noise, t)])
    tt, cc, eps = torch.cat([t, t]), torch.cat([cond, cond]), torch.cat([noise, noise])
    if sched.config.prediction_type == "v_prediction":
        eps = sched.get_velocity(torch.cat([xw, xl]), eps, tt)
    pred = (policy if policy is not None else t2i.unet)(x, tt, cc).sample
    mw, ml = per_sample_mse(pred, eps).chunk(2)
    with torch.no_grad(), adapters_off(t2i.unet):
        rpred = t2i.unet(x, tt, cc).sample
        rw, rl = per_sample_mse(rpred, eps).chunk(2)
    return dpo_loss(mw, ml, rw, rl, beta)
