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

``loss.scale`` chooses how the ranking term enters the objective:

* ``paper`` (the default): ``λ·(L_cross + L_in)`` as above, λ constant over training. At
  initialisation this term dwarfs the CLIP loss: with B = 128, the paper's λ = 1/16 and
  µ(k) = 1/log(k+1), the ranking term is ≈ 18.4 against a CLIP loss of ≈ log 128 ≈ 4.85
  (3.8×). Near initialisation every score is about equal, so each direction's µ-weighted NLL
  is Σ_k µ(k)·log(B−k+1) ≈ 147.3 and the term λ·(147.3 + 147.3) ≈ 18.4. Measured with this
  module: 18.36 vs CLIP 4.92 (3.7×) on random 1024-d unit embeddings at logit scale 1/0.07
  (tests/test_rankclip_scale.py checks it); 18.4–18.8 vs 4.85 (3.8–3.9×) on a freshly
  initialised open_clip RN50 (random pixels, two caption sets); 19.8 vs 5.15 (3.8×) on the
  fresh tiny world CLIP with world captions.
* ``authors_code``: the term exactly as the authors' code computes it (Jam1ezhang/RankCLIP at
  7b7ccd3, ``rankclip/train.py`` ``get_loss``, with ``rankclip/rank_losses.py`` ``ListMLE``)::

      rank_weight = clamp(3·(epoch − 1) / (epochs − 1), 0, 2)      # epoch 1 … epochs
      in    = (ListMLE(I·Iᵀ, T·Tᵀ) + ListMLE(T·Tᵀ, I·Iᵀ)) / 32     # scores × exp(logit_scale)
      cross = (ListMLE(S, Sᵀ) + ListMLE(Sᵀ, S)) / 32
      loss  = L_CLIP + rank_weight · (cross / B + in / B)          # B: the (gathered) batch

  ListMLE is the µ-free Plackett–Luce NLL summed over positions and averaged over rows, so the
  two directions are summed, not averaged: the term is ``rank_weight·2·(L_cross + L_in)/(32·B)``
  in this module's terms. The authors' 2/32 is the 1/16 of the paper's λ; their ramp and the
  further 1/B are what make the term lighter. Their ListMLE also puts ``eps = 1e-10`` inside
  its log, kept here (`plackett_luce`): it penalises score spreads beyond ≈ 23 nats, possible
  once the logit scale exceeds ≈ 11.5 (a spread is at most twice it; CLIP starts at 14.3 and
  may reach 100). Its random shuffle only breaks ties and is left out. µ(k) = ``loss.decay``:
  ``constant`` is the authors' code, which has no positional decay; it stays a separate
  choice so the decay ablation means the same under both scales. The ramp needs the epoch:
  `train` sets it before every optimizer step (`RankCLIPLoss.set_epoch`). Its size: 0 in
  epoch 1; at an initialisation-like batch (B = 128, constant µ: each direction ≈
  Σ_k log(B−k+1) ≈ 496.4) the term is rank_weight × 0.485, so at most ≈ 0.97 once the ramp
  reaches 2 (epoch 43 of the authors' 64) — 19× lighter than the paper's 18.4 then, and 0 for
  the whole first epoch (measured at ramp 2, constant µ: 0.97–0.99 on the fresh RN50, 1.05 on
  the fresh world CLIP).
  **λ does not multiply this term**: the authors gate each part on ``options.lambda1 > 0``
  (in-modal) and ``options.lambda2 > 0`` (cross-modal) and never multiply by them (their
  ``parser.py`` does not even define the two options). Here one λ = ``loss.rank_weight``
  gates both: λ = 0 is plain CLIP, and every λ > 0 trains the same objective, so the rows of
  a λ ablation under ``authors_code`` are identical by construction (the table's caption says
  so: `pipeline.ablation_notes`).

Which logarithm µ(k) = 1/log(k+1) takes is not settled by a source read for this project: the
plan (config/plans/003_*.txt) quotes the paper as "µ = 1/log(k + 1)" with no base (the paper's
full text was not readable where this was checked), and the authors' code has no µ at all. This
module uses the natural logarithm (``torch.log``). With log₂ every µ(k) would be ln 2 ≈ 0.69
times as large (the term at initialisation ≈ 12.8 instead of 18.4 at B = 128, λ = 1/16).
"""
from __future__ import annotations

import math

import torch

# loss.scale: how the ranking term enters the objective (module docstring)
SCALES = ("paper", "authors_code")

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


# rankclip/rank_losses.py list_MLE's eps, inside its log (the ``authors_code`` scale only)
AUTHORS_EPS = 1e-10


def plackett_luce(scores: torch.Tensor, target: torch.Tensor, mu: torch.Tensor,
                  eps: float = 0.0) -> torch.Tensor:
    """Mean over rows of the µ-weighted Plackett–Luce NLL of `target`'s descending order.

    scores, target: [B, N]; the target is detached; mu: [N]. ``eps > 0``: the authors'
    ListMLE form, ``log(Σ_{j≥k} exp(s_j − max) + eps) − (s_k − max)``: the eps bounds each
    position's tail at ≈ log eps ≈ −23 nats below the row's top score, so scores spread wider
    than that are penalised (the last position's NLL, 0 exactly, becomes ≈ spread − 23).
    """
    order = target.detach().argsort(dim=1, descending=True)
    s = scores.gather(1, order)
    if eps:
        s = s - s.max(dim=1, keepdim=True).values
        tail = torch.log(torch.cumsum(s.exp().flip(1), dim=1).flip(1) + eps)
    else:
        # log Σ_{j≥k} exp s_j, as a reversed cumulative log-sum-exp
        tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return ((tail - s) * mu).sum(dim=1).mean()


def ranking_losses(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                   decay: str, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-modal, in-modal) ranking-consistency losses for L2-normalised embeddings
    (`plackett_luce`'s ``eps``: 0 for the paper's formula, `AUTHORS_EPS` for the authors')."""
    n = img.shape[0]
    mu = decay_weights(decay, n, img.device, img.dtype)
    s_it = logit_scale * img @ txt.T
    cross = 0.5 * (plackett_luce(s_it, s_it.T, mu, eps) + plackett_luce(s_it.T, s_it, mu, eps))
    s_ii = logit_scale * img @ img.T
    s_tt = logit_scale * txt @ txt.T
    inm = 0.5 * (plackett_luce(s_ii, s_tt, mu, eps) + plackett_luce(s_tt, s_ii, mu, eps))
    return cross, inm


def authors_rank_weight(epoch: int, epochs: int) -> float:
    """The authors' ramp of the ranking term (Jam1ezhang/RankCLIP ``rankclip/train.py``):
    ``clamp(3·(min(epoch, epochs) − 1) / (epochs − 1), 0, 2)``, epochs counted from 1."""
    if epochs < 2:
        # the authors' formula divides by epochs − 1
        raise ValueError(f"loss.scale authors_code: the ramp needs at least 2 epochs, got {epochs}")
    e = min(epoch, epochs)
    return min(2.0, max(0.0, 3.0 * (e - 1) / (epochs - 1)))


class RankCLIPLoss(torch.nn.Module):
    """open_clip's ClipLoss plus the ranking-consistency term, scaled as ``scale`` says:
    ``paper``: λ·(cross-modal + in-modal); ``authors_code``: the authors' ramp × 2·(cross-modal
    + in-modal) / (32·B), λ > 0 only switching it on (module docstring)."""

    def __init__(self, rank_weight: float, decay: str | None, scale: str = "paper"):
        super().__init__()
        import open_clip

        if rank_weight < 0 or not math.isfinite(rank_weight):
            raise ValueError(f"rank_weight must be a finite number ≥ 0, got {rank_weight}")
        if rank_weight > 0 and decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}; known: {sorted(DECAYS)}")
        if scale not in SCALES:
            raise ValueError(f"unknown loss scale {scale!r}; known: {list(SCALES)}")
        self.clip = open_clip.ClipLoss()
        self.rank_weight, self.decay, self.scale = rank_weight, decay, scale
        self.epoch = self.epochs = None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """The training position for the ``authors_code`` ramp (epoch 1 … epochs)."""
        authors_rank_weight(epoch, epochs)  # checks epochs ≥ 2
        self.epoch, self.epochs = epoch, epochs

    def forward(self, image_features, text_features, logit_scale):
        clip = self.clip(image_features, text_features, logit_scale)
        out = {"clip": clip}
        total = clip
        if self.rank_weight > 0:
            eps = AUTHORS_EPS if self.scale == "authors_code" else 0.0
            cross, inm = ranking_losses(image_features, text_features, logit_scale, self.decay,
                                        eps)
            out.update(cross=cross, inmodal=inm)
            if self.scale == "paper":
                total = total + self.rank_weight * (cross + inm)
            else:
                if self.epochs is None:
                    raise RuntimeError("loss.scale authors_code: set_epoch(epoch, epochs) "
                                       "before the first step (the ramp needs the epoch)")
                ramp = authors_rank_weight(self.epoch, self.epochs)
                n = image_features.shape[0]
                # the authors' (a + b) / 32 of each part is 2 × this module's mean of a and b
                rank = ramp * (2.0 * cross + 2.0 * inm) / (32.0 * n)
                out["rank_ramp"] = torch.tensor(ramp, dtype=clip.dtype, device=clip.device)
                total = total + rank
        out["loss"] = total
        return out
