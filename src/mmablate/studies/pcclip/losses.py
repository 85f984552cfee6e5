"""How two image embeddings are combined, and the losses that align the combination with the
embedding of the difference caption.

Combination of the (L2-normalised) image embeddings f(A), f(B) ∈ R^d into one vector in R^d:

* ``subtract`` — f(A) − f(B) (the paper's);
* ``concat``   — W [f(A); f(B)] with a learned linear map W: R^{2d} → R^d (no bias; PyTorch's
  default initialisation, not the subtraction), trained with the text encoder; this is how the
  2d-dimensional concatenation is brought back to the text embedding's dimension d;
* ``multiply`` — f(A) ⊙ f(B) (symmetric in A and B: it cannot tell which image is the first).

Losses between the combination v (NOT normalised: for subtraction the raw difference of the two
unit image embeddings, as the authors' code) and the caption embedding t of a batch, as the
authors' ``finetune.py`` (dsam99/pc_clip, ``finetune_gt_captions_diff``):

* ``contrastive`` — their ``clip_loss(norm(t), v, temperature=1)``: both sides L2-normalised
  inside, logits ``norm(t) @ norm(v).T / temperature``, the mean of the two cross-entropies
  (open_clip's ``ClipLoss`` at logit scale 1/temperature computes exactly this). ``temperature``
  is 1 by default (theirs); ``"pretrained"`` uses the pretrained model's logit scale
  (exp(logit_scale), ≈ 100 for OpenAI/DataComp CLIPs: logits 100× sharper), an ablation option
  only. Their NaN guard (a NaN loss returns 0 and the step is skipped) is not reproduced: the
  loss is finite in fp32 for any non-zero inputs, and in bf16 autocast the logits are float32;
* ``squared`` — their ``torch.nn.MSELoss()(norm(t), v)``: the mean over batch AND dimensions of
  (t̂ − v)², v the raw difference (its norm is 2 sin(θ/2) for images at angle θ, not 1). The
  project before followed the appendix text with a normalised v and a sum over dimensions;
* ``hinge`` — bidirectional margin ranking loss (VSE-style, mean over the batch's negatives) on
  the normalised v̂, t̂: max(0, m − v̂_i·t̂_i + v̂_i·t̂_j) and max(0, m − v̂_i·t̂_i + v̂_j·t̂_i). The
  authors have no hinge loss and open_clip has none; written here. A batch of one pair has no
  negatives: the loss is 0 there (with its gradient graph kept), not the NaN of a mean over
  nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COMBINES = ("subtract", "concat", "multiply")
LOSSES = ("contrastive", "squared", "hinge")


class Combine(torch.nn.Module):
    def __init__(self, op: str, dim: int):
        super().__init__()
        if op not in COMBINES:
            raise ValueError(f"unknown combine {op!r}; known: {list(COMBINES)}")
        self.op, self.dim = op, dim
        self.proj = torch.nn.Linear(2 * dim, dim, bias=False) if op == "concat" else None

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        if fa.shape != fb.shape or fa.shape[-1] != self.dim:
            raise ValueError(f"image embeddings of shapes {tuple(fa.shape)} and {tuple(fb.shape)} "
                             f"cannot be combined into dimension {self.dim}")
        if self.op == "subtract":
            return fa - fb
        if self.op == "multiply":
            return fa * fb
        return self.proj(torch.cat([fa, fb], dim=-1))


def hinge_loss(v: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    s = v @ t.T
    pos = s.diag()
    n = s.shape[0]
    if n < 2:  # no negatives: nothing to rank (0, not the NaN of a mean over no terms)
        return s.sum() * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    to_text = (margin - pos[:, None] + s).clamp(min=0)[off]
    to_image = (margin - pos[None, :] + s).clamp(min=0)[off]
    return 0.5 * (to_text.mean() + to_image.mean())


def clip_loss(v: torch.Tensor, t: torch.Tensor, logit_scale) -> torch.Tensor:
    """open_clip's ClipLoss on normalised v, t at `logit_scale` (= 1 / temperature)."""
    from ...models.clip import import_open_clip

    return import_open_clip().ClipLoss()(F.normalize(v, dim=-1), F.normalize(t, dim=-1),
                                         logit_scale)


def check_temperature(value, where: str) -> None:
    """Config check (no torch): a number > 0 or ``"pretrained"``."""
    from ...errors import ConfigError

    ok = value == "pretrained" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and value > 0)
    if not ok:
        raise ConfigError(f"{where}: {value!r} must be a number > 0 or \"pretrained\" (the model's "
                          f"own logit scale)")


class PairLoss(torch.nn.Module):
    """``PairLoss(kind, margin, temperature)(combined, text, pretrained_scale)``; see the module
    docstring. ``pretrained_scale`` (exp of the model's logit scale) is used only with
    ``temperature="pretrained"``."""

    def __init__(self, kind: str, margin: float = 0.2, temperature=1.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; known: {list(LOSSES)}")
        if not (temperature == "pretrained" or float(temperature) > 0):
            raise ValueError(f"temperature {temperature!r}: a number > 0 or 'pretrained'")
        self.kind, self.margin, self.temperature = kind, margin, temperature

    def logit_scale(self, pretrained_scale=None):
        if self.temperature == "pretrained":
            if pretrained_scale is None:
                raise ValueError("temperature 'pretrained' needs the model's logit scale")
            return pretrained_scale
        return 1.0 / float(self.temperature)

    def forward(self, combined: torch.Tensor, text: torch.Tensor,
                pretrained_scale=None) -> torch.Tensor:
        if combined.shape[-1] != text.shape[-1]:
            raise ValueError(f"combined image vector has dimension {combined.shape[-1]} but the "
                             f"text embedding {text.shape[-1]}")
        if self.kind == "contrastive":
            return clip_loss(combined, text, self.logit_scale(pretrained_scale))
        t = F.normalize(text, dim=-1)
        if self.kind == "squared":
            return F.mse_loss(t, combined)  # torch.nn.MSELoss(): mean over all elements
        return hinge_loss(F.normalize(combined, dim=-1), t, self.margin)
