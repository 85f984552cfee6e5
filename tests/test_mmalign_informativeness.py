"""mmalign honesty (issue 21): the world's online-pair judge ranks empty or cut-off answers last,
BDHS negatives must make a claim, informativeness metrics, collapse and identical-output flags,
the validation-split tuning rule."""
import json

import numpy as np
import pytest

from mmablate.report.flags import (caption_notes, collapse_reasons, identical_rows,
                                   row_collapses)
from mmablate.studies.mmalign.bdhs import makes_claim
from mmablate.studies.mmalign.evaluate import informativeness, words
from mmablate.studies.mmalign.judge import (UNINFORMATIVE, OracleJudge, complete, names_object,
                                            world_rank_score)
from mmablate.world.scenes import Obj, Scene
from mmablate.world.vqa import BiasedSampler, describe, hallucinate

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
D = "describe the image ."


def scene():
    return Scene((Obj("circle", "red", "large", 0.2, 0.5), Obj("square", "blue", "small", 0.8, 0.5)))


def test_empty_or_cut_off_descriptions_rank_below_every_informative_one():
    s = scene()
    gt = describe(s)
    empty = ["there is a", "there is a .", "there is a small .", "", "the letter"]
    informative = [gt, "there is a large red circle on the left .",
                   "there is a green triangle .",  # a hallucination, but it says something
                   "there is a large red circle . there is a green triangle . there is a yellow "
                   "circle ."]
    for e in empty:
        assert world_rank_score(e, s, D, gt) == UNINFORMATIVE, e
    for i in informative:
        assert world_rank_score(i, s, D, gt) > UNINFORMATIVE, i
    # within the informative ones: correct and complete beats partial beats hallucinated
    sc = [world_rank_score(t, s, D, gt) for t in informative[:3]]
    assert sc[0] > sc[1] > sc[2]
    # the old score −(2h + missed) preferred saying nothing (−2) to one hallucination (−3)
    assert world_rank_score("there is a large red circle on the left . there is a yellow "
                            "triangle .", s, D, gt) > UNINFORMATIVE
    # a cut-off description (no closing '.') ranks with the empty ones
    assert world_rank_score(gt[:-2], s, D, gt) == UNINFORMATIVE
    # more detail (size, position) of a correct object ranks higher, never above a miss
    assert world_rank_score("there is a large red circle on the left .", s, D, gt) > \
        world_rank_score("there is a red circle .", s, D, gt) > \
        world_rank_score("there is a red circle . there is a yellow circle .", s, D, gt)


def test_short_answers_that_state_nothing_rank_last():
    s = scene()
    q, gt = "what colour is the circle ?", "the circle is red ."
    assert world_rank_score("the circle is .", s, q, gt) == UNINFORMATIVE
    assert world_rank_score("the circle is blue .", s, q, gt) > UNINFORMATIVE
    assert world_rank_score("the circle is red .", s, q, gt) > \
        world_rank_score("the circle is blue .", s, q, gt)
    q, gt = "is there a red circle in the image ?", "yes , there is a red circle ."
    assert world_rank_score(gt, s, q, gt) > world_rank_score("no , there is no red circle .",
                                                             s, q, gt) > UNINFORMATIVE
    assert world_rank_score("yes , there is a red circle", s, q, gt) == UNINFORMATIVE  # cut off


def test_oracle_judge_ranks_with_the_world_rank_score(tmp_path):
    s = scene()
    j = OracleJudge({"a.png": s})
    assert j.rank_many([("x/a.png", D, "there is a", describe(s)),
                        ("x/a.png", D, describe(s), describe(s))]) == \
        [UNINFORMATIVE, world_rank_score(describe(s), s, D, describe(s))]


def test_claims_and_completeness():
    assert complete("there is a red circle .") and not complete("there is a red circle")
    assert not complete("  ")
    assert names_object("there is a small red circle on the left .")
    assert names_object("no , there is no green cross .")
    assert names_object("the letter k is written in the image .")
    assert not names_object("there is a small .") and not names_object("yes , there is a .")
    # BDHS: the generated part must hold a word and the sentence must name something
    assert not makes_claim("there is a small".split(), ["."])
    assert not makes_claim("there is a small".split(), ["."], names_object)
    assert not makes_claim("there is a".split(), ["small", "."], names_object)
    assert makes_claim("there is a".split(), ["green", "triangle", "."], names_object)
    assert makes_claim("there is a".split(), ["tiny", "."])  # no world test: any word


def test_bdhs_keeps_a_claim_when_no_try_is_accepted():
    """A model that always closes the sentence at once: every try is rejected for making no
    claim; the record says so (claim False) instead of passing a truncation as accepted."""
    from mmablate.studies.mmalign import bdhs

    calls = []

    def fake_generate(model, proc, imgs, qs, **kw):
        calls.append(len(imgs))
        return ["."] * len(imgs)

    class Sim:
        def cosine(self, a, b):
            return [0.5] * len(a)

    class M:
        class config:
            image_token_id = 3

    import mmablate.studies.mmalign.model as model_mod
    orig = model_mod.generate
    model_mod.generate = fake_generate
    try:
        recs, st = bdhs.bdhs_generate(
            M(), None, [{"id": "p0", "image": "a.png", "question": D,
                         "chosen": "there is a large red circle on the left ."}],
            {"rho_th": 0.99, "sim_threshold": 0.97, "max_tries": 3, "flip_prob": 0.5,
             "max_new_tokens": 4}, Sim(), seed=0, progress=False, claim=names_object)
    finally:
        model_mod.generate = orig
    assert len(calls) == 3  # retried until max_tries
    assert st["accepted_frac"] == 0 and st["no_claim"] == 1
    assert recs[0]["sentences"][0]["claim"] is False


def test_informativeness_metrics():
    vocab = ["red circle", "blue square"]
    m = informativeness(["there is a large red circle on the left .", "there is a .",
                         "there are two blue squares ."], vocab)
    assert m["desc_words"] == pytest.approx((9 + 3 + 5) / 3)
    assert m["desc_empty"] == pytest.approx(100 / 3)
    assert words("there is a .") == 3


def test_collapse_reasons():
    base = {"desc_words": 15.4, "desc_empty": 0.0}
    assert collapse_reasons({"desc_words": 14.0, "desc_empty": 1.0}, base, -0.1) == []
    r = collapse_reasons({"desc_words": 3.0, "desc_empty": 100.0}, base, -1.69)
    assert len(r) == 3 and "words" in r[0] and "name no object" in r[1] and "chosen" in r[2]
    # without a base only the absolute tests apply
    assert collapse_reasons({"desc_words": 3.0, "desc_empty": 0.0}, None) == []


def _ab(tmp_path, rows, metrics=("m1", "desc_words", "desc_empty")):
    ab_rows = []
    for label, kind, per_seed in rows:
        evals = {}
        for seed, rec in per_seed.items():
            p = tmp_path / f"{label}_{seed}.json"
            p.write_text(json.dumps(rec))
            evals[str(seed)] = str(p)
        ab_rows.append({"label": label, "value": label, "is_baseline": False,
                        "config_hash": "h" + label, "kind": kind, "evals": evals})
    return {"study": "s", "ablation": "a", "part": "p", "key": "x.p", "title": "T",
            "scale": "tiny", "seeds": [0, 1], "dataset": "world",
            "metrics": [{"id": m, "label": m, "unit": "", "higher_is_better": True}
                        for m in metrics], "rows": ab_rows}


def test_identical_outputs_are_detected_from_the_records(tmp_path):
    same = {0: {"metrics": {"m1": 1.0}, "detail": {"captions": ["a"], "wall_s": 3}},
            1: {"metrics": {"m1": 2.0}, "detail": {"captions": ["b"], "wall_s": 4}}}
    other = {0: {"metrics": {"m1": 1.0}, "detail": {"captions": ["a"]}},
             1: {"metrics": {"m1": 2.5}, "detail": {"captions": ["c"]}}}
    # the same results with different timings (and configs) are identical outputs
    same2 = {s: {**r, "detail": {**r["detail"], "wall_s": 99}, "config": {"x": s}}
             for s, r in same.items()}
    ab = _ab(tmp_path, [("llama", "variant", same), ("gpt", "variant", same2),
                        ("t5", "variant", other)], metrics=("m1",))
    assert identical_rows(ab) == [["llama", "gpt"]]
    assert "IDENTICAL OUTPUTS: rows llama, gpt" in caption_notes(ab, [])


def test_a_collapsed_row_is_flagged_in_the_caption(tmp_path):
    from mmablate.report.summary import summarise
    import pandas as pd

    def rec(w, e, chosen=None):
        return {"metrics": {"m1": 1.0, "desc_words": w, "desc_empty": e},
                "train": {"collapse": collapse_reasons({}, None, chosen)}}

    ab = _ab(tmp_path, [("ok", "variant", {0: rec(14, 0), 1: rec(15, 1)}),
                        ("bad", "variant", {0: rec(3, 100, -1.7), 1: rec(3.2, 98)}),
                        ("base", "reference", {0: rec(15.4, 0)})])
    df = pd.DataFrame([{"variant": r["label"], "seed": int(s), "metric": k, "value": v}
                       for r in ab["rows"] for s, p in r["evals"].items()
                       for k, v in json.loads(open(p).read())["metrics"].items()])
    recs = summarise(ab, df)
    col = row_collapses(ab, recs)
    assert list(col) == ["bad"] and any("seed 0: chosen reward" in w for w in col["bad"])
    assert "COLLAPSE: bad:" in caption_notes(ab, recs)


def test_tuning_rule_rejects_settings_that_collapse():
    from mmablate.studies.mmalign.tune import choose

    base = {"mmhal": 4.0, "mmhalv": 40, "desc_words": 15.0, "desc_empty": 0.0,
            "recall_coco": 40, "pope": 85}

    def run(lr, mmhal, w, e, changed):
        return {"setting": {"train.lr": lr}, "gamma": 0.5, "p": 0.5,
                "metrics": {**base, "mmhal": mmhal, "desc_words": w, "desc_empty": e},
                "changed": changed}

    res = {"base": base, "runs": [run(5e-4, 5.5, 3.0, 100.0, 1.0),   # collapsed: best MMHal
                                  run(1.5e-4, 4.4, 14.0, 1.0, 0.6),  # informative, changed
                                  run(5e-5, 4.0, 15.0, 0.0, 0.02)]}  # barely changed
    c = choose(res)
    assert c["chosen"] == {"train.lr": 1.5e-4}
    res["runs"] = [res["runs"][0], res["runs"][2]]
    assert choose(res)["chosen"] is None and "no setting" in choose(res)["verdict"]


@pytest.mark.slow  # a small world run: SFT (~100 steps), base evaluation, two DPO jobs (~1–2 min)
def test_a_small_world_run_whose_dpo_descriptions_collapse_is_flagged(tmp_path):
    """The test that would have caught issue 21: a DPO model taught to answer "there is a ." is
    flagged in its job summary and in the table caption; the same run at lr 0 is not."""
    import argparse

    import pandas as pd

    from mmablate.report.collect import collect
    from mmablate.report.tables import make_tables
    from mmablate.studies.mmalign.cli import cmd_dpo, cmd_eval
    from mmablate.studies.mmalign.sft import train_sft
    from mmablate.studies.mmalign.tune import validation_eval
    from mmablate.studies.mmalign.worlddata import write_mmalign_world

    C, S = ["red", "green", "blue"], ["circle", "square"]
    w = tmp_path / "w"
    write_mmalign_world(dict(seed=1, colours=C, shapes=S, max_objects=1, glyph_prob=0.0,
                             cooccur=0.6, image_size=32, n_sft=24, n_pref=16, n_eval=12,
                             pref_yesno_frac=0.0), w)
    # every preference pair prefers the empty answer: DPO learns to say nothing
    pf = w / "povid/povid_pairs.json"
    pairs = json.loads(pf.read_text())
    for p in pairs:
        p["chosen"], p["rejected"] = "there is a .", p["chosen"]
    pf.write_text(json.dumps(pairs))
    tiny = {"vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
            "text": {"width": 32, "mlp": 64, "layers": 1, "heads": 2, "max_len": 128}}
    train_sft({"seed": 0, "colours": C, "shapes": S, "model": tiny,
               "data": {"file": str(w / "sft/llava_instruct.json"), "images": str(w / "images")},
               "train": {"steps": 100, "batch_size": 16, "lr": 0.005, "warmup": 5,
                         "weight_decay": 0.0, "log_every": 50, "ckpt_every": 1000,
                         "cache_items": True}}, tmp_path / "sft", 1)
    base = str(tmp_path / "sft/model")
    ecfg = validation_eval({"describe_prompt": D, "max_new_tokens": 16,
                            "max_new_tokens_short": 4, "batch_size": 64,
                            "judge": {"kind": "oracle"}}, w)
    ecfg["benchmarks"].pop("vqat")  # no glyphs in this world
    ecfg["benchmarks"]["vqat"] = {"file": str(tmp_path / "tvqa.json"), "images": str(w / "images")}
    (tmp_path / "tvqa.json").write_text(json.dumps({"data": []}))
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"model": base, "eval": ecfg}))
    base_rec = tmp_path / "base/metrics.json"
    cmd_eval(argparse.Namespace(config=str(ev), out=str(base_rec), threads=1))
    b = json.loads(base_rec.read_text())["metrics"]
    assert b["desc_empty"] <= 10 and b["desc_words"] > 6, b  # the base describes

    recs = {}
    for name, lr in (("collapsed", 0.02), ("untouched", 0.0)):
        cfg = {"model": {"base": base, "lora": None}, "sft": None, "bdhs_file": None,
               "pairs": {"file": str(pf), "images": str(w / "images"), "limit": None},
               "bdhs": {"gamma": 1.0}, "mixed_dpo": {"p": 1.0, "max_new_tokens": 8},
               "dpo": {"beta": 0.1}, "judge": {"kind": "oracle"}, "scenes": str(w / "scenes.jsonl"),
               "train": {"steps": 12, "batch_size": 8, "lr": lr, "warmup": 0, "log_every": 4,
                         "ckpt_every": 100},
               "eval": ecfg, "reference_eval": str(base_rec)}
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(cfg))
        out = tmp_path / name / "s0/metrics.json"
        cmd_dpo(argparse.Namespace(config=str(f), seed=0, out=str(out), threads=1,
                                   save_model=False))
        recs[name] = out
    col = json.loads(recs["collapsed"].read_text())
    assert col["metrics"]["desc_empty"] >= 50, col["detail"]["descriptions"]  # it collapsed
    assert col["train"]["collapse"], col["train"]
    assert json.loads(recs["untouched"].read_text())["train"]["collapse"] == []

    ab = {"study": "mmalign", "ablation": "lr", "part": "lr", "key": "train.lr", "title": "T",
          "scale": "smoke", "seeds": [0], "dataset": "world",
          "metrics": [{"id": m, "label": m, "unit": "", "higher_is_better": True}
                      for m in ("mmhalv", "recall_coco", "desc_words", "desc_empty")],
          "rows": [{"label": n, "value": n, "is_baseline": n == "untouched", "config_hash": n,
                    "kind": "variant", "evals": {"0": str(p)}} for n, p in recs.items()] +
                  [{"label": "base (SFT)", "value": None, "is_baseline": False,
                    "config_hash": "b", "kind": "reference", "evals": {"0": str(base_rec)}}]}
    af = tmp_path / "ab.json"
    af.write_text(json.dumps(ab))
    collect(af, tmp_path / "m.csv")
    make_tables(af, tmp_path / "m.csv", tmp_path / "t.md", tmp_path / "t.tex", tmp_path / "t.csv")
    cap = (tmp_path / "t.md").read_text().split("\n")[0]
    assert "COLLAPSE: collapsed:" in cap and "untouched:" not in cap.split("COLLAPSE")[1]
    assert pd.read_csv(tmp_path / "t.csv")["desc_words_mean"].notna().all()


def test_dpo_jobs_read_the_base_evaluation_and_tables_show_informativeness():
    """Each tiny DPO job flags a collapse against the SFT base's evaluation (its input), and
    every mmalign table carries the informativeness columns beside the plan's metrics."""
    from mmablate.pipeline import Pipeline
    from .test_e2e_mmalign_pipeline import ONLY, cfg

    P = Pipeline(cfg(ONLY), write=False)
    (eh,) = P.stages["mmalign_eval"]
    want = P.output("mmalign_eval", eh)
    for h, c in P.stages["mmalign_dpo"].items():
        assert c["reference_eval"] == want
        assert want in P.inputs("mmalign_dpo", h, 0)["reference"]
    for a in P.ablations:
        ids = [m["id"] for m in P.ablation_config(a)["metrics"]]
        assert {"desc_words", "desc_empty", "mmhalv_holistic", "mmhalv_attribute"} <= set(ids)
        assert ids.index("mmhalv") < ids.index("desc_words")  # beside, after the plan's


def test_validation_world_is_the_same_generator_on_other_images(tmp_path):
    """The tuning's validation split: the world's own generator at another seed — the same
    benchmark files, no preference pairs, other scenes than the test benchmarks'."""
    from mmablate.studies.mmalign.evaluate import load_benchmarks
    from mmablate.studies.mmalign.tune import validation_eval, write_validation_world
    from mmablate.studies.mmalign.worlddata import write_mmalign_world

    w = dict(seed=3, colours=COLOURS, shapes=SHAPES, max_objects=2, glyph_prob=0.5,
             cooccur=0.6, image_size=32, n_sft=6, n_pref=8, n_eval=8, pref_yesno_frac=0.3)
    write_mmalign_world(w, tmp_path / "test")
    val = write_validation_world(w, tmp_path / "val")
    assert json.loads((val / "povid/povid_pairs.json").read_text()) == []
    scenes = lambda d: [json.loads(line)["scene"] for line in  # noqa: E731
                        (d / "scenes.jsonl").read_text().splitlines()
                        if json.loads(line)["image"].startswith("eval_")]
    assert scenes(val) != scenes(tmp_path / "test") and len(scenes(val)) == 8
    ecfg = validation_eval({"describe_prompt": D}, val)
    bench = load_benchmarks(ecfg)
    assert all(str(val) in r["image"] for recs in bench.values() for r in recs)
    assert ecfg["scenes"] == f"{val}/scenes.jsonl"
