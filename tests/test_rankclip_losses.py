import math

import pytest
import torch

from mmablate.studies.rankclip.losses import (DECAYS, RankCLIPLoss, decay_weights,
                                               plackett_luce, ranking_losses)


def direct_pl(scores, target, mu):
    """Plackett–Luce NLL computed row by row, position by position."""
    total = 0.0
    for i in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda j: -float(target[i, j]))
        for k, j in enumerate(order):
            rest = order[k:]
            denom = math.log(sum(math.exp(float(scores[i, r])) for r in rest))
            total += float(mu[k]) * (denom - float(scores[i, j]))
    return total / scores.shape[0]


@pytest.mark.parametrize("decay", sorted(DECAYS))
def test_plackett_luce_matches_direct_computation(decay):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g,
                                                                           dtype=torch.float64)
    mu = decay_weights(decay, 7, dtype=torch.float64)
    assert float(plackett_luce(s, t, mu)) == pytest.approx(direct_pl(s, t, mu), rel=1e-10)


def test_decay_values():
    k = torch.arange(1, 4, dtype=torch.float64)
    assert decay_weights("inv_log_k_plus_1", 3, dtype=torch.float64).tolist() == pytest.approx(
        (1 / torch.log(k + 1)).tolist())
    assert decay_weights("exp_neg_k", 2).tolist() == pytest.approx([math.exp(-1), math.exp(-2)])
    assert decay_weights("constant", 3).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="unknown decay 'quadratic'"):
        decay_weights("quadratic", 3)


def test_ranking_losses_use_both_directions():
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    scale = torch.tensor(10.0)
    cross, inm = ranking_losses(img, txt, scale, "constant")
    mu = torch.ones(6)
    s = scale * img @ txt.T
    assert float(cross) == pytest.approx(0.5 * (direct_pl(s, s.T, mu) + direct_pl(s.T, s, mu)), rel=1e-5)
    sii, stt = scale * img @ img.T, scale * txt @ txt.T
    assert float(inm) == pytest.approx(0.5 * (direct_pl(sii, stt, mu) + direct_pl(stt, sii, mu)), rel=1e-5)


def test_zero_weight_is_plain_clip_loss_and_gradients_flow():
    import open_clip

    g = torch.Generator().manual_seed(2)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    scale = torch.tensor(5.0)
    plain = open_clip.ClipLoss()(img, txt, scale)
    assert float(RankCLIPLoss(0.0, None)(img, txt, scale)["loss"]) == pytest.approx(float(plain))
    out = RankCLIPLoss(0.0625, "inv_log_k_plus_1")(img, txt, scale)
    assert float(out["loss"]) > float(plain)
    out["loss"].backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()


def test_bad_loss_settings():
    with pytest.raises(ValueError, match="rank_weight"):
        RankCLIPLoss(-0.1, "constant")
    with pytest.raises(ValueError, match="unknown decay"):
        RankCLIPLoss(0.1, "nope")
