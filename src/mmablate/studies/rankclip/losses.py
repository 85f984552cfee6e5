"""RankCLIP's list-wise ranking-consistency losses.

The paper's objective is ``L = L_CLIP + λ·(L_cross + L_in)``:

* ``L_cross`` (cross-modal consistency): for each item i of the batch, the ranking of the texts
  by their similarity to image i should agree with the ranking of the images by their similarity
  to text i; i.e. row i of ``S = s·I Tᵀ`` is scored against the order of row i of ``Sᵀ`` and
  vice versa.
* ``L_in`` (in-modal consistency): the ranking of the batch's images by similarity to image i
  (``I Iᵀ``) should agree with the ranking of the texts by similarity to text i (``T Tᵀ``), in
  both directions.

Each agreement is a Plackett–Luce (ListMLE) negative log-likelihood of the target order under the
other matrix's scores, with a positional decay µ(k) on the k-th position (k = 1 is the top):

    ℓ_i = − Σ_k µ(k) · [ s_{π(k)} − log Σ_{j ≥ k} exp s_{π(j)} ]

with π the target order (descending, from the detached other matrix). Rows are averaged; the two
directions of each term are averaged.

Where this differs from the authors' published code: that code applies no positional decay
(every position has weight 1), ramps the ranking weight in over training and rescales the
ranking terms by extra constants. Here µ(k) is the paper's 1/log(k+1) by default (the plan's
ablation replaces it), λ is constant over training, and no further scaling is applied.
"""
from __future__ import annotations

import math

import torch

# µ(k) for k = 1..n; the names are the values of the `decay` part in studies/spec.py (which holds
# their table labels and how plans name them).
DECAYS = {
    "constant": lambda k: torch.ones_like(k),
    "inv_k": lambda k: 1.0 / k,
    "inv_k_plus_1": lambda k: 1.0 / (k + 1.0),
    "exp_neg_k": lambda k: torch.exp(-k),
    "inv_log_k_plus_1": lambda k: 1.0 / torch.log(k + 1.0),
}


def decay_weights(name: str, n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    if name not in DECAYS:
        raise ValueError(f"unknown decay {name!r}; known: {sorted(DECAYS)}")
    k = torch.arange(1, n + 1, device=device, dtype=dtype)
    return DECAYS[name](k)


def plackett_luce(scores: torch.Tensor, target: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the µ-weighted Plackett–Luce NLL of `target`'s descending order.

    scores, target: [B, N]; the target is detached; mu: [N].
    """
    order = target.detach().argsort(dim=1, descending=True)
    s = scores.gather(1, order)
    # log Σ_{j≥k} exp s_j, as a reversed cumulative log-sum-exp
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return ((tail - s) * mu).sum(dim=1).mean()


def ranking_losses(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                   decay: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-modal, in-modal) ranking-consistency losses for L2-normalised embeddings."""
    n = img.shape[0]
    mu = decay_weights(decay, n, img.device, img.dtype)
    s_it = logit_scale * img @ txt.T
    cross = 0.5 * (plackett_luce(s_it, s_it.T, mu) + plackett_luce(s_it.T, s_it, mu))
    s_ii = logit_scale * img @ img.T
    s_tt = logit_scale * txt @ txt.T
    inm = 0.5 * (plackett_luce(s_ii, s_tt, mu) + plackett_luce(s_tt, s_ii, mu))
    return cross, inm


class RankCLIPLoss(torch.nn.Module):
    """open_clip's ClipLoss plus λ·(cross-modal + in-modal ranking consistency)."""

    def __init__(self, rank_weight: float, decay: str | None):
        super().__init__()
        import open_clip

        if rank_weight < 0 or not math.isfinite(rank_weight):
            raise ValueError(f"rank_weight must be a finite number ≥ 0, got {rank_weight}")
        if rank_weight > 0 and decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}; known: {sorted(DECAYS)}")
        self.clip = open_clip.ClipLoss()
        self.rank_weight, self.decay = rank_weight, decay

    def forward(self, image_features, text_features, logit_scale):
        clip = self.clip(image_features, text_features, logit_scale)
        out = {"clip": clip}
        total = clip
        if self.rank_weight > 0:
            cross, inm = ranking_losses(image_features, text_features, logit_scale, self.decay)
            out.update(cross=cross, inmodal=inm)
            total = total + self.rank_weight * (cross + inm)
        out["loss"] = total
        return out
