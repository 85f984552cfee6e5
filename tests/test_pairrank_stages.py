"""Pair-ranking study: Diffusion-DPO loss, selection, Pick-a-Pic loader, SD stand-in, oracle."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from .conftest import only_study
from mmablate.errors import ConfigError, DataError
from mmablate.studies.pairrank import selection as S
from mmablate.studies.pairrank.dpo import add_lora
from mmablate.studies.pairrank.losses import adapters_off, dpo_loss, dpo_step_losses


# ---- Diffusion-DPO ---------------------------------------------------------------------------
def test_dpo_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    mw, ml, rw, rl = (torch.rand(7, generator=g, dtype=torch.float64) for _ in range(4))
    beta = 3.7
    loss, acc = dpo_loss(mw, ml, rw, rl, beta)
    direct = 0.0
    for i in range(7):
        inside = -beta / 2 * ((float(mw[i]) - float(ml[i])) - (float(rw[i]) - float(rl[i])))
        direct += -math.log(1 / (1 + math.exp(-inside)))
    assert float(loss) == pytest.approx(direct / 7, rel=1e-12)
    # a policy that fits the winner better than the reference does lowers the loss
    better, _ = dpo_loss(mw - 0.01, ml, mw, ml, 100.0)
    assert float(better) < math.log(2)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=8, attention_head_dim=4)


class _T2I:
    """The slice of T2I that dpo_step_losses uses."""

    def __init__(self, unet):
        from diffusers import DDPMScheduler

        self.unet, self.cfg = unet, DDPMScheduler(num_train_timesteps=100).config

    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.cfg)


def test_first_dpo_loss_is_log2_and_reference_is_base():
    torch.manual_seed(0)
    unet = tiny_unet()
    x = torch.randn(2, 3, 8, 8)
    c = torch.randn(2, 5, 16)
    t = torch.tensor([10, 50])
    base = unet(x, t, c).sample
    params = add_lora(unet, 4)
    assert params and all("lora" in n for n, p in unet.named_parameters() if p.requires_grad)
    m = _T2I(unet)
    loss, _ = dpo_step_losses(m, torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8),
                              torch.randn(3, 5, 16), 5000.0, torch.Generator().manual_seed(1))
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        moved = unet(x, t, c).sample
        with adapters_off(unet):
            ref = unet(x, t, c).sample
    assert not torch.allclose(moved, base)
    assert torch.allclose(ref, base, atol=1e-6)  # adapters disabled = the base model


# ---- selection -------------------------------------------------------------------------------
def test_quality_metrics_on_normalised_scores():
    w, l = np.array([2.0, 4.0, 3.0]), np.array([0.0, 1.0, 3.0])  # min 0, max 4
    nw, nl = w / 4, l / 4
    assert S.quality(w, l, "product") == pytest.approx(nw * (1 - nl))
    assert S.quality(w, l, "difference") == pytest.approx(nw - nl)
    assert S.quality(w, l, "ratio", eps=0.01) == pytest.approx(nw / (nl + 0.01))
    with pytest.raises(ValueError, match="unknown quality"):
        S.quality(w, l, "sum")


def test_fixed_threshold_keeps_the_top_fraction():
    rng = np.random.default_rng(0)
    w, l = rng.random(1000), rng.random(1000)
    out = S.select(w, l, "product", "fixed", 0.0533)
    assert out["n_kept"] == 53
    q = S.quality(w, l, "product")
    assert min(q[out["indices"]]) >= np.sort(q)[-53]
    assert out["fraction"] == pytest.approx(0.053)


def test_otsu_splits_a_bimodal_distribution():
    rng = np.random.default_rng(1)
    q = np.concatenate([rng.normal(0.2, 0.03, 900), rng.normal(0.8, 0.03, 100)])
    cut = S.otsu_cut(q)
    assert 0.35 < cut < 0.65
    # the exact Otsu criterion: no other cut has a larger between-class variance
    def between(c):
        a, b = q[q <= c], q[q > c]
        return len(a) * len(b) / len(q) ** 2 * (a.mean() - b.mean()) ** 2
    assert all(between(cut) >= between(c) - 1e-12 for c in np.linspace(0.15, 0.85, 29))


def test_selection_that_keeps_nothing_is_a_clear_error():
    w = l = np.full(10, 0.5)  # every Q equal: the dynamic split keeps nothing
    with pytest.raises(DataError, match="keeps zero of 10 pairs"):
        S.select(w, l, "product", "dynamic", 0.05)


def test_adaptive_picks_the_best_validation_fraction():
    f, _ = S.choose_fraction({0.02: 0.1, 0.0533: 0.3, 0.15: 0.2})
    assert f == 0.0533
    rng = np.random.default_rng(2)
    out = S.select(rng.random(200), rng.random(200), "difference", "adaptive", 0.0533, fraction=0.15)
    assert out["n_kept"] == 30


# ---- Pick-a-Pic schema ----------------------------------------------------------------------
def _world_cfg(**kw):
    cfg = {"seed": 3, "image_size": 16, "colours": ["red", "green", "blue"],
           "shapes": ["circle", "square"], "n_pairs": 40, "n_reward_pairs": 10, "n_pretrain": 12,
           "n_aesthetic": 6, "n_eval_prompts": 4, "n_val_prompts": 2, "temperature": 0.2,
           "tie_prob": 0.2,
           "renderers": [{"name": "good", "p_colour": 0.0, "p_shape": 0.0, "blur": 0.0,
                          "noise": 2, "p_clutter": 0.0},
                         {"name": "bad", "p_colour": 1.0, "p_shape": 0.5, "blur": 0.5,
                          "noise": 10, "p_clutter": 0.5}]}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmablate.world.preference import write_pairs

    d = tmp_path_factory.mktemp("pairworld")
    summary = write_pairs(_world_cfg(), d, progress=False)
    return d, summary


def test_world_writes_pickapic_schema_and_loader_drops_ties(world):
    import pandas as pd

    from mmablate.data.pickapic import load_pairs
    from mmablate.world.preference import PICKAPIC_COLUMNS

    d, summary = world
    df = pd.read_parquet(d / "pairs_train.parquet")
    assert set(PICKAPIC_COLUMNS) <= set(df.columns)
    ties = (df.label_0 == 0.5).sum()
    assert ties > 0 and summary["tie_fraction"] == pytest.approx(ties / len(df), abs=1e-4)
    pairs = load_pairs(d / "pairs_train.parquet")
    assert len(pairs) == len(df) - ties and pairs.n_ties == ties
    # winner first: the good renderer always draws the right colour, the bad one never does
    win, lose = pairs.images("winner"), pairs.images("loser")
    assert win.shape == (len(pairs), 16, 16, 3) and win.dtype == np.uint8
    nt = df[df.label_0 != 0.5].reset_index(drop=True)
    first = nt.label_0 > nt.label_1
    for k in range(len(nt)):
        t = json.loads(nt.truth_0[k] if first[k] else nt.truth_1[k])
        src = nt.jpg_0[k] if first[k] else nt.jpg_1[k]
        assert pairs.winners[k] == src
        assert pairs.losers[k] == (nt.jpg_1[k] if first[k] else nt.jpg_0[k])
        assert "renderer" in t
    assert lose.shape == win.shape and not np.array_equal(win, lose)
    prompts = json.loads((d / "prompts.json").read_text())
    assert not set(prompts["eval"]) & set(prompts["train"])


def test_missing_column_and_undecodable_image(tmp_path, world):
    import pandas as pd

    from mmablate.data.pickapic import load_pairs

    d, _ = world
    df = pd.read_parquet(d / "pairs_train.parquet")
    df.drop(columns=["label_1"]).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(DataError, match=r"nolabel.parquet: missing column\(s\) \['label_1'\]"):
        load_pairs(tmp_path / "nolabel.parquet")
    bad = df.copy()
    bad.loc[:, "jpg_0"] = [b"not a jpeg"] * len(bad)
    bad.to_parquet(tmp_path / "bad.parquet")
    p = load_pairs(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet: pair .* does not decode"):
        p.images("winner"), p.images("loser")
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "absent.parquet")


def test_colour_oracle_on_rendered_images():
    from mmablate.world.preference import Renderer, colour_oracle, draw, prompt_text

    rng = np.random.default_rng(0)
    cols, shapes = ["red", "green", "blue", "yellow"], ["circle", "square"]
    good = Renderer("g", 0.0, 0.0, 0.0, 4, 0.0)
    bad = Renderer("b", 1.0, 0.0, 0.0, 4, 0.0)
    prompts, imgs, want = [], [], []
    for k in range(24):
        p = ("large" if k % 2 else "small", cols[k % 4], "circle", "left")
        r = good if k % 3 else bad
        im, _ = draw(p, r, rng, cols, shapes, 16)
        prompts.append(prompt_text(*p)); imgs.append(np.asarray(im)); want.append(r is good)
    got = colour_oracle(np.stack(imgs), prompts, cols)
    assert (got == np.array(want, float)).mean() >= 0.95
    blank = np.full((1, 16, 16, 3), 30, np.uint8)
    assert colour_oracle(blank, ["a large red circle"], cols)[0] == 0


# ---- Stable Diffusion loader on a local save_pretrained stand-in ------------------------------
@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny Stable Diffusion pipeline saved with save_pretrained (the paper scale's format):
    the rehearsal's builder at 16 px (8 px latents)."""
    from mmablate.rehearsal.pairrank import sd_pipeline

    return sd_pipeline(tmp_path_factory.mktemp("sd_standin") / "sd", text_width=16,
                       max_length=16, seed=0, latent_size=8, unet_widths=(8, 16),
                       vae_widths=(8, 16), attention_head_dim=4)


def test_sd_pipeline_directory_loads_samples_and_trains(tmp_path, sd_dir):
    from mmablate.errors import CheckpointError
    from mmablate.studies.pairrank.diffusion import load_t2i

    m = load_t2i({"kind": "sd", "pretrained": str(sd_dir)})
    assert m.image_size == 16
    im = m.sample(["a red circle", "a blue square"], seed=0, steps=2, guidance=2.0)
    assert im.shape == (2, 16, 16, 3) and im.dtype == np.uint8
    add_lora(m.unet, 4)
    z = m.to_latent(im)
    loss, _ = dpo_step_losses(m, z[:1], z[1:], m.text_states(["a red circle"]), 5000.0)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_t2i({"kind": "sd", "pretrained": str(tmp_path / "empty")})


# ---- config ----------------------------------------------------------------------------------
def test_config_errors_name_the_key(smoke_config):
    import copy

    from mmablate.pipeline import Pipeline

    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pairrank"]["ablations"][0]["values"] = ["sum"]
    with pytest.raises(ConfigError, match=r"studies.pairrank.ablations\[0\].values\[0\]: unknown quality"):
        Pipeline(cfg, ["c.yaml"], write=False)
    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pairrank"]["model"]["unet"]["norm_num_groups"] = 12
    with pytest.raises(ConfigError, match="norm_num_groups: 12 does not divide"):
        Pipeline(cfg, ["c.yaml"], write=False)
    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pairrank"]["selection"]["top_fraction"] = 0
    with pytest.raises(ConfigError, match="selection.top_fraction"):
        Pipeline(cfg, ["c.yaml"], write=False)


def test_variants_share_jobs(smoke_config):
    from mmablate.pipeline import Pipeline

    P = Pipeline(smoke_config, ["c.yaml"], write=False)
    q, t = P.ablation("pairrank__quality"), P.ablation("pairrank__threshold")
    assert q.rows[0].config_hash == t.rows[0].config_hash  # the baseline is one job
    assert len(P.stages["pairrank_base"]) == 1 and len(P.stages["pairrank_score"]) == 1
    assert len(P.stages["pairrank_reward"]) == 4
    labels = {m["id"]: m["label"] for m in P.ablation_config(q)["metrics"]}
    assert labels.pop("oracle").startswith("World oracle")  # the world's extra column
    assert labels and all("world twin" in v for v in labels.values())
    assert any("quality_distributions" in x for x in P.targets())


def sd_dpo_stage(tmp_path, sd_dir, world, steps: int) -> dict:
    """A Diffusion-DPO stage config on the small SD stand-in: the first 8 world pairs."""
    from mmablate.data.pickapic import load_pairs

    d, _ = world
    pairs = d / "pairs_train.parquet"
    sel = tmp_path / "selection.json"
    sel.write_text(json.dumps({"pairs": str(pairs), "indices": list(range(len(load_pairs(pairs))))[:8]}))
    return {"selection": str(sel), "model": {"kind": "sd", "pretrained": str(sd_dir)},
            "train": {"beta": 5000, "lora_rank": 4, "lora_alpha": 4, "lr": 0.01, "steps": steps,
                      "batch_size": 4, "warmup": 1, "ckpt_every": 2, "log_every": 1}}


def test_dpo_stopped_and_resumed_equals_uninterrupted(tmp_path, sd_dir, world):
    """LoRA Diffusion-DPO resumes from its adapter-only checkpoint to the same adapter."""
    import torch

    from mmablate.studies.pairrank.dpo import train_dpo

    cfg = sd_dpo_stage(tmp_path, sd_dir, world, steps=5)
    whole = train_dpo(cfg, 0, tmp_path / "a", progress=False)
    assert train_dpo(cfg, 0, tmp_path / "b", stop_after=3, progress=False) == {"stopped_at": 3}
    resumed = train_dpo(cfg, 0, tmp_path / "b", progress=False)
    assert resumed["resumed_from"] == 3 and resumed["final_loss"] == whole["final_loss"]
    a = torch.load(tmp_path / "a/lora/adapter.pt")
    b = torch.load(tmp_path / "b/lora/adapter.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it trained


def test_selection_truth_on_the_world_and_none_for_real_data(tmp_path, world):
    import pandas as pd

    from mmablate.data.pickapic import load_pairs
    from mmablate.studies.pairrank.selection import selection_truth

    d, _ = world
    path = d / "pairs_train.parquet"
    df = pd.read_parquet(path)
    nt = df[df.label_0 != df.label_1].reset_index(drop=True)
    first = nt.label_0 > nt.label_1
    rend = [(json.loads(nt.truth_0[k] if first[k] else nt.truth_1[k])["renderer"],
             json.loads(nt.truth_1[k] if first[k] else nt.truth_0[k])["renderer"])
            for k in range(len(nt))]
    # the "good" renderer always draws the prompt's colour, the "bad" one never does
    clean = [k for k, (w, l) in enumerate(rend) if (w, l) == ("good", "bad")]
    rev = [k for k, (w, l) in enumerate(rend) if (w, l) == ("bad", "good")]
    t = selection_truth(path, clean[:3] + rev[:1])
    assert t["kept"]["n"] == len(clean[:3] + rev[:1]) and t["all"]["n"] == len(load_pairs(path))
    assert t["kept"]["clean"] == pytest.approx(len(clean[:3]) / t["kept"]["n"])
    assert t["kept"]["reversed"] == pytest.approx(len(rev[:1]) / t["kept"]["n"])
    assert t["all"]["clean"] == pytest.approx(len(clean) / len(nt))
    real = df.drop(columns=["truth_0", "truth_1"])
    real.to_parquet(tmp_path / "real.parquet")
    assert selection_truth(tmp_path / "real.parquet", [0]) is None


def test_unet_pretraining_stopped_and_resumed_equals_uninterrupted(tmp_path, smoke_config, world):
    """The base UNet's data order resumes from its checkpointed generator state."""
    import torch

    from mmablate.models import clip as clipm
    from mmablate.pipeline import Pipeline
    from mmablate.studies.pairrank.diffusion import pretrain

    P = Pipeline(only_study(copy.deepcopy(smoke_config), "pairrank"), ["smoke.yaml"],
                 results=str(tmp_path / "r"), write=False)
    cfg = copy.deepcopy(next(iter(P.stages["pairrank_base"].values())))
    d, _ = world
    model, _, _ = clipm.build(cfg["text_encoder"]["model"])  # a world CLIP, untrained
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    cfg["text_encoder"]["weights"] = str(tmp_path / "clip.pt")
    cfg["data"] = str(d / "pretrain.parquet")
    cfg["train"].update(steps=5, ckpt_every=2, batch_size=4)
    whole = pretrain(cfg, tmp_path / "a", progress=False)
    assert pretrain(cfg, tmp_path / "b", stop_after=3, progress=False) == {"stopped_at": 3}
    resumed = pretrain(cfg, tmp_path / "b", progress=False)
    assert resumed["resumed_from"] == 3 and resumed["final_loss"] == whole["final_loss"]


@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_dpo_gradient_accumulation_equals_one_batch(tmp_path, sd_dir, world, monkeypatch, k):
    """k micro-batches of B/k give the gradient of one batch of B at every optimizer step: each
    pair keeps its noise and timestep (drawn for the whole effective batch), the harness averages
    the micro-batch losses. The gradients are recorded where the harness steps the optimizer."""
    from mmablate.data.pickapic import load_pairs
    from mmablate.studies.pairrank.dpo import train_dpo
    from mmablate.training.harness import Harness

    grads = []
    real_step = Harness._optimizer_step

    def recording_step(self):
        grads.append({i: p.grad.detach().clone() for i, p in enumerate(self._params())})
        real_step(self)

    monkeypatch.setattr(Harness, "_optimizer_step", recording_step)
    d, _ = world
    pairs = d / "pairs_train.parquet"
    sel = tmp_path / "selection.json"
    sel.write_text(json.dumps({"pairs": str(pairs), "indices": list(range(len(load_pairs(pairs))))[:8]}))

    def run(batch_size, name):
        grads.clear()
        cfg = {"selection": str(sel), "model": {"kind": "sd", "pretrained": str(sd_dir)},
               # lr 0: both steps see the same weights, so step 2 checks the second step's draws
               # (Adam's first update, ±lr wherever a gradient is nonzero, would magnify rounding)
               "train": {"beta": 5000, "lora_rank": 4, "lora_alpha": 4, "lr": 0.0, "steps": 2,
                         "batch_size": batch_size, "effective_batch": 4, "warmup": 1,
                         "ckpt_every": 5, "log_every": 1}}
        s = train_dpo(cfg, 0, tmp_path / name, progress=False)
        assert s["effective_batch"] == 4
        return list(grads)

    one, acc = run(4, "one"), run(4 // k, f"acc{k}")
    assert len(one) == len(acc) == 2
    assert all(any(g.abs().sum() > 0 for g in step.values()) for step in one)
    # float32 tolerance: β = 5000 multiplies the rounding of the per-pair errors (the convolutions
    # sum in another order at another batch size), so elementwise tolerances are measured against
    # each tensor's size; a wrong draw or a wrong scaling is off by O(1)
    for n, (s_one, s_acc) in enumerate(zip(one, acc)):
        for i in s_one:
            err = float((s_acc[i] - s_one[i]).norm() / s_one[i].norm().clamp_min(1e-12))
            assert err < 1e-4, (i, err)


def test_step_draws_slice_micro_batches_and_resume_after_the_finished_step():
    from mmablate.studies.pairrank.diffusion import StepDraws

    def drawer(g):
        return lambda step: (torch.arange(4) + 10 * step, {"noise": torch.randn(4, generator=g)})

    g = torch.Generator().manual_seed(0)
    d = StepDraws(drawer(g), g, batch_size=2, micro_batch=1, accum=2, rank=1)  # rank 1 of 2
    d.order(0)
    full = d._extras[0]["noise"].clone()
    d.order(1)  # a prefetching loader may ask for the next step before this one ran
    assert [float(d.take()["noise"]) for _ in range(2)] == [float(full[1]), float(full[3])]
    d.step_finished(0)
    after0 = d.state()["generator"]
    assert not torch.equal(after0, g.get_state())  # step 1's draws moved the generator on
    g2 = torch.Generator().manual_seed(123)
    d2 = StepDraws(drawer(g2), g2, batch_size=2, micro_batch=1, accum=2, rank=1)
    d2.set_state(d.state())
    d2.order(1)  # restored before its first draw: step 1 draws what it drew before
    torch.testing.assert_close(d2._extras[1]["noise"], d._extras[1]["noise"])
