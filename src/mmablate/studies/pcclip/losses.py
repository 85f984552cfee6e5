"""How two image embeddings are combined, and the losses that align the combination with the
embedding of the difference caption.

Combination of the (L2-normalised) image embeddings f(A), f(B) ∈ R^d into one vector in R^d:

* ``subtract`` — f(A) − f(B) (the paper's);
* ``concat``   — W [f(A); f(B)] with a learned linear map W: R^{2d} → R^d (no bias; PyTorch's
  default initialisation, not the subtraction), trained with the text encoder; this is how the
  2d-dimensional concatenation is brought back to the text embedding's dimension d;
* ``multiply`` — f(A) ⊙ f(B) (symmetric in A and B: it cannot tell which image is the first).

Losses on the L2-normalised combination v and caption embedding t of a batch:

* ``contrastive`` — the CLIP loss (open_clip's ``ClipLoss``) between v and t, at the pretrained
  model's temperature (the paper finetunes with the CLIP loss; the logit scale is kept frozen);
* ``squared`` — mean ‖v − t‖² (the squared loss of the paper's appendix);
* ``hinge`` — bidirectional margin ranking loss (VSE-style, mean over the batch's negatives):
  max(0, m − v_i·t_i + v_i·t_j) and max(0, m − v_i·t_i + v_j·t_i). open_clip has no hinge loss;
  written here.
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
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    to_text = (margin - pos[:, None] + s).clamp(min=0)[off]
    to_image = (margin - pos[None, :] + s).clamp(min=0)[off]
    return 0.5 * (to_text.mean() + to_image.mean())


class PairLoss(torch.nn.Module):
    def __init__(self, kind: str, margin: float = 0.2):
        super().__init__()
        import open_clip

        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; known: {list(LOSSES)}")
        self.kind, self.margin = kind, margin
        self.clip = open_clip.ClipLoss()

    def forward(self, combined: torch.Tensor, text: torch.Tensor, logit_scale) -> torch.Tensor:
        if combined.shape[-1] != text.shape[-1]:
            raise ValueError(f"combined image vector has dimension {combined.shape[-1]} but the "
                             f"text embedding {text.shape[-1]}")
        v = F.normalize(combined, dim=-1)
        t = F.normalize(text, dim=-1)
        if self.kind == "contrastive":
            return self.clip(v, t, logit_scale)
        if self.kind == "squared":
            return ((v - t) ** 2).sum(-1).mean()
        return hinge_loss(v, t, self.margin)
