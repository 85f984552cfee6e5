"""Plan documents → ablations: the five real plans, mojibake, math in prose, malformed plans."""
from pathlib import Path

import pytest

from mmablate.plans import PlanError, parse_plan
from mmablate.plans.registry import MMALIGN, PAIRRANK, PCCLIP, RANKCLIP, REGISTRY
from mmablate.plans.text import repair, repair_text
from mmablate.plans.values import Unavailable, ValueProblem, math_runs

REPO = Path(__file__).resolve().parent.parent
PLANS = REPO / "config" / "plans"
BAD = REPO / "tests" / "data" / "plans"

RW = [0.0, 0.03125, 0.0625, 0.125, 0.25]
ZS = ["zeroshot_top1", "zeroshot_top3", "zeroshot_top5"]
PC = ["diff_acc", "zeroshot_acc", "clipscore"]
PR = ["aesthetic", "image_reward", "pickscore", "hpsv2"]
MM = ["pope", "mmhal", "mmhalv", "llavaw", "vqat", "gqa", "mmvet", "recall_coco"]
# What the issue says each plan must become: (study, [(id, key, values, metrics)]).
EXPECTED = {
    "000": ("pairrank", [("quality", "selection.quality", ["difference", "ratio"], PR),
                         ("threshold", "selection.threshold", ["dynamic", "adaptive"], PR)]),
    "001": ("pcclip", [("encoders", "finetune.encoders", ["text", "text_image"], PC),
                       ("combine", "finetune.combine", ["subtract", "concat", "multiply"],
                        ["diff_acc", "zeroshot_acc", "arithmetic_acc"])]),
    "002": ("pcclip", [("captioner", "captions.captioner", ["gpt", "bert", "t5"], PC),
                       ("loss", "finetune.loss", ["contrastive", "squared", "hinge"], PC)]),
    "003": ("rankclip", [("rank_weight", "loss.rank_weight", RW, ZS),
                         ("decay", "loss.decay", ["constant", "inv_k", "inv_k_plus_1", "exp_neg_k",
                                                  "inv_log_k_plus_1"], ZS)]),
    "004": ("mmalign", [("gamma", "bdhs.gamma", [0.0, 0.25, 0.5, 0.75, 1.0], MM),
                        ("mix_p", "mixed_dpo.p", [0.0, 0.25, 0.5, 0.75, 1.0], MM)]),
}
PARTS = {  # the plans' Ablated Part text, repaired
    ("003", "rank_weight"): "Ranking Consistency Loss weight factors (λ for in-modal and "
                            "cross-modal losses)",
    ("003", "decay"): "The decaying factor (µ) used in the list-wise ranking loss",
    ("000", "quality"): "The formulation of the quality metric used to rank image preference "
                        "pairs (currently ψ(xw/c) * (1 - ψ(xl/c)))",
}


def plan_file(num: str) -> Path:
    (f,) = PLANS.glob(f"{num}_*.txt")
    return f


# SHA-256 of the five plan files as the researchers delivered them (checked equal to the
# originals when copied in): the repo's copies are those bytes, HTML, mis-decoded text and all.
RAW_SHA256 = {
    "000_af84066ef2384f68.txt": "5f1629ab09afe651352452303fd7092450a71e528edc39be38fd210b5105aff7",
    "001_fe0f99cd16184143.txt": "0537d62bb6f8d250e8b1189b3813b36b1f77620f3079168404551164e248ebf8",
    "002_4bbd03f87e4667c6.txt": "dc29957403f36b58343eabd92065e14c3d255ff30eb370308b62d937159652aa",
    "003_5f77638eb3f4bb57.txt": "cb54ffa7b829097a6421c3a140c8387735649dede56b0c2c5225bc5812e15574",
    "004_6c14384181bd7aa0.txt": "b012609eb44171479fc13c3a6a7a30405eb367e4e3b7f0a0b813ab737d494645",
}


def test_plans_are_the_raw_originals():
    """config/plans/ holds the delivered plans unedited (the parser repairs them, nobody else):
    an edit of a copy — a "fixed" λ, a stripped wrapper — changes its digest."""
    import hashlib

    for name, digest in RAW_SHA256.items():
        raw = (PLANS / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest, f"config/plans/{name} was edited"
        assert b'class="trajectory-box"' in raw  # the HTML wrapper they arrive in
    assert "Î»".encode() in (PLANS / "003_5f77638eb3f4bb57.txt").read_bytes()  # mojibake kept


@pytest.mark.parametrize("num", sorted(EXPECTED))
def test_real_plan_parses_to_expected(num):
    plan = parse_plan(plan_file(num))
    study, abls = EXPECTED[num]
    assert plan.study == study
    got = [(a.id, a.key, a.values, a.metrics) for a in plan.ablations]
    assert got == abls
    # typed: floats stay floats (0.0, not 0: the config hash would differ)
    assert [[type(v) for v in a.values] for a in plan.ablations] == \
        [[type(v) for v in e[2]] for e in abls]
    for a in plan.ablations:
        if (num, a.id) in PARTS:
            assert a.part == PARTS[(num, a.id)]
        assert not any(c in a.part for c in "ÃÂÎÏâðŒ\uf8ff")
        assert a.line > 0 and len(a.value_lines) == len(a.values)


def test_mojibake_repair():
    assert repair("Ïˆ(xw/c) * (1 - Ïˆ(xl/c))") == "ψ(xw/c) * (1 - ψ(xl/c))"
    assert repair("weight (Î») and Âµ = 1/log(k + 1)") == "weight (λ) and µ = 1/log(k + 1)"
    assert repair("ðŸ§  Reasoning Trace") == "🧠 Reasoning Trace"
    assert repair("subtractionâ€”for example") == "subtraction—for example"
    # Mac Roman, as plan 004 arrives: ftfy handles γ; the 📋 residue is fixed by hand
    assert repair("the mixing weight Œ≥ is fixed") == "the mixing weight γ is fixed"
    assert repair("\uf8ffüìã Ablation Plan") == "📋 Ablation Plan"
    assert repair("plain ASCII, and µ λ ψ kept") == "plain ASCII, and µ λ ψ kept"
    for f in PLANS.glob("*.txt"):
        text = "\n".join(repair_text(f.read_text(encoding="utf-8")))
        assert not any(m in text for m in ("Ã", "Â", "Ïˆ", "Î»", "ðŸ", "Œ≥", "\uf8ff")), f.name
        assert len(repair_text(f.read_text(encoding="utf-8"))) == \
            len(f.read_text(encoding="utf-8").splitlines())


def test_math_in_prose():
    decay = RANKCLIP.part("decay").values
    assert decay.parse("an exponential decay such as exp(–k)") == "exp_neg_k"
    assert decay.parse("1/(1 + k)") == "inv_k_plus_1"
    assert decay.parse("(k+1)^-1") == "inv_k_plus_1"
    assert decay.parse("µ = 1/ln(k+1) (the paper's)") == "inv_log_k_plus_1"
    assert decay.parse("no decay (constant 1)") == "constant"
    assert math_runs("Difference-based metric: ψ(xw/c) - ψ(xl/c)") == \
        ["psi ( xw / c ) - psi ( xl / c )"]
    q = PAIRRANK.part("quality").values
    assert q.parse("(1 - ψ(xl/c)) · ψ(xw/c)") == "product"
    assert q.parse("Ratio-based metric: Ïˆ(xw/c) / (Ïˆ(xl/c) + Îµ)") == "ratio"
    assert q.parse("ψ(xw/c)/ψ(xl/c)") == "ratio"
    with pytest.raises(ValueProblem, match="known values"):
        q.parse("ψ(xw/c) + ψ(xl/c)")


def test_numbers_with_words():
    rw = RANKCLIP.part("rank_weight").values
    assert rw.parse("λ = 1/16 (baseline)") == 0.0625
    assert rw.parse("0.25") == 0.25 and isinstance(rw.parse("1"), float)
    with pytest.raises(ValueProblem, match="several numbers"):
        rw.parse("0.25 or 0.5")
    with pytest.raises(ValueProblem, match="out of range"):
        rw.parse("-0.5")
    p = MMALIGN.part("mix_p").values
    assert p.parse("p = 25%") == 0.25
    assert p.parse("fully offline") == 1.0
    with pytest.raises(ValueProblem, match=r"in \[0, 1\]"):
        p.parse("p = 2")


def test_model_families_and_unavailable():
    cap = PCCLIP.part("captioner").values
    assert [cap.parse(x) for x in ("GPT-3", "BERT", "T5", "LLaMA2-13B-chat-hf")] == \
        ["gpt", "bert", "t5", "llama2_chat"]
    for x in ("GPT-4 via API", "GPT-4o", "Claude 3"):
        with pytest.raises(Unavailable, match="offline"):
            cap.parse(x)
    with pytest.raises(ValueProblem, match="known values.*llama2_chat.*gpt.*bert.*t5"):
        cap.parse("Mistral-7B")


def test_registry_keys_are_unique():
    for spec in REGISTRY.values():
        keys = [p.key for p in spec.parts]
        ids = [p.id for p in spec.parts]
        assert len(set(keys)) == len(keys) and len(set(ids)) == len(ids)


def _problems(name):
    with pytest.raises(PlanError) as e:
        parse_plan(BAD / name)
    return e.value.problems, str(e.value)


def test_bad_unknown_part():
    problems, msg = _problems("bad_unknown_part.md")
    assert [ln for ln, _ in problems] == [4, 12]
    assert "bad_unknown_part.md:4: ablated part 'The learning-rate warmup schedule" in msg
    assert "known parts: rank_weight = loss.rank_weight" in msg and "decay = loss.decay" in msg
    assert "bad_unknown_part.md:12: cannot run" in msg and "patch size" in msg


def test_bad_value():
    problems, msg = _problems("bad_value.md")
    assert [ln for ln, _ in problems] == [8, 9, 15]
    assert "bad_value.md:8: decay (loss.decay): '1/k^2 (quadratic decay)'" in msg
    assert "known values: one of: constant" in msg and "inv_log_k_plus_1" in msg
    assert "bad_value.md:9: metric 'Zero-shot Top-10 Accuracy'" in msg and "zeroshot_top5" in msg
    assert "bad_value.md:15: rank_weight" in msg and "no number" in msg


def test_bad_missing_replacement_and_unavailable_value():
    problems, msg = _problems("bad_missing_replacement.md")
    assert [ln for ln, _ in problems] == [7, 12]
    assert "bad_missing_replacement.md:7: cannot run: captioner" in msg and "offline" in msg
    assert "bad_missing_replacement.md:12:" in msg and "no 'Replacement' block" in msg
    assert "contrastive" in msg and "hinge" in msg


def test_bad_unknown_study():
    problems, msg = _problems("bad_unknown_study.md")
    assert problems[0][0] == 1
    assert "names no known study" in msg
    for sid in ("rankclip", "pcclip", "pairrank", "mmalign"):
        assert sid in msg


def test_duplicate_part_and_action(tmp_path):
    f = tmp_path / "p.md"
    f.write_text("# RankCLIP\n- **Ablated Part**: ranking loss weight\n- **Action**: REMOVE\n"
                 "- **Replacement**: 0.1, 0.2\n- **Metrics**: top-1\n"
                 "- **Ablated Part**: the λ weight\n- **Replacement**:\n  - 0.5\n"
                 "- **Metrics**: top-5\n")
    with pytest.raises(PlanError) as e:
        parse_plan(f)
    msg = str(e.value)
    assert "p.md:3: action 'REMOVE' is not supported" in msg
    assert "p.md:6: part rank_weight (loss.rank_weight) is already ablated at line 2" in msg


def test_inline_values_and_phrasing(tmp_path):
    f = tmp_path / "p.md"
    f.write_text("# my plan / RankCLIP ranking consistent pretraining\n"
                 "### weights\n* **Ablated part**: weight of the ranking losses (lambda)\n"
                 "* **Replacement**: 0, 1/32, 0.5\n* **Metrics**: top-1 accuracy and Top-5\n")
    plan = parse_plan(f)
    (a,) = plan.ablations
    assert (plan.study, a.id, a.values, a.metrics) == \
        ("rankclip", "rank_weight", [0.0, 0.03125, 0.5], ["zeroshot_top1", "zeroshot_top5"])
    assert plan.notes and "REPLACE assumed" in plan.notes[0][1]


@pytest.mark.parametrize("study,text,part", [
    ("rankclip", "weight of the ranking losses", "rank_weight"),
    ("rankclip", "the lambda coefficient", "rank_weight"),
    ("rankclip", "Ranking-loss weights (in-modal / cross-modal)", "rank_weight"),
    ("rankclip", "positional decay in the listwise loss", "decay"),
    ("pcclip", "which encoders are finetuned", "encoders"),
    ("pcclip", "operation combining the two image embeddings", "combine"),
    ("pcclip", "LLM that writes the difference captions", "captioner"),
    ("pcclip", "finetuning objective / loss function", "loss"),
    ("pairrank", "pair-quality metric", "quality"),
    ("pairrank", "fraction of data selected", "threshold"),
    ("mmalign", "gamma in BDHS", "gamma"),
    ("mmalign", "offline/online mix ratio", "mix_p"),
])
def test_parts_matched_robustly(study, text, part):
    from mmablate.plans.text import best_match

    spec = REGISTRY[study]
    assert best_match({p.id: p.phrases for p in spec.parts}, text) == (part, None)
