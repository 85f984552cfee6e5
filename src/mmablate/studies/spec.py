"""One typed description per study: title, ablatable parts with their values' labels, metrics
with label/unit/direction, stages with their outputs — and how plans name each of them.

Everything else is derived from these four descriptions: the plan registry
(`mmablate.plans.registry`), each study's `TITLE` / `ABLATABLE` / `METRICS` / value labels
(`mmablate.studies.protocol`), the list of studies (`mmablate.pipeline.STUDIES`), each ablated
value's check (`Part.check`), the stage output paths (`mmablate.pipeline.stage_outputs`) and the
tests' study list. Plain data only (no study package and no plan parser is imported).
"""
from __future__ import annotations

from dataclasses import dataclass, field

OFFLINE = ("is only reachable through a web API, and the pipeline runs offline (no hub or API "
           "access at any scale it ships)")


@dataclass(frozen=True)
class Value:
    """One option of a choice part: its table label and how plans name it."""
    label: str
    phrases: tuple = ()
    formulas: tuple = ()   # math a plan may write for it (compared as expressions)


@dataclass(frozen=True)
class Part:
    id: str                # ablation id
    key: str               # the dotted config key the ablation replaces
    description: str       # what the part is (check-config, errors)
    phrases: tuple         # how plans name the part
    values: dict = field(default_factory=dict)  # choice: config value → Value; {} for a number
    lo: float | None = None                     # number: range
    hi: float | None = None
    named: dict = field(default_factory=dict)   # number: value → phrases ("fully offline")
    unavailable: tuple = ()                     # choice: ((phrases, reason), ...)
    noun: str = ""         # how errors name a value (default: the key's last part)
    symbol: str = ""       # how errors name a number (default: the key's last part)

    @property
    def is_number(self) -> bool:
        return not self.values

    def check(self, value) -> None:
        """A ValueError saying what is wrong unless `value` is one of the part's values (a
        choice) or a finite number in its range (a number): the one check of an ablated value,
        for the study's own (baseline) value and every ablation's."""
        last = self.key.split(".")[-1]
        if not self.is_number:
            try:
                known = value in self.values
            except TypeError:  # unhashable (a list, a mapping)
                known = False
            if not known:
                raise ValueError(f"unknown {self.noun or last} {value!r}; known: "
                                 f"{sorted(self.values)}")
            return
        import math

        name = self.symbol or last
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (self.lo is None or value >= self.lo)
              and (self.hi is None or value <= self.hi))
        if not ok:
            if self.lo is not None and self.hi is not None:
                rng = f"a number in [{self.lo:g}, {self.hi:g}]"
            elif self.lo is not None:
                rng = f"a finite number ≥ {self.lo:g}"
            elif self.hi is not None:
                rng = f"a finite number ≤ {self.hi:g}"
            else:
                rng = "a finite number"
            raise ValueError(f"{name} must be {rng}, got {value!r}")


@dataclass(frozen=True)
class Metric:
    id: str
    label: str
    unit: str
    higher_is_better: bool
    phrases: tuple = ()    # how plans name it (none: reported beside the plan's metrics only)

    def record(self) -> dict:
        """The metric's entry in an ablation config (the tables' column header)."""
        return {"label": self.label, "unit": self.unit, "higher_is_better": self.higher_is_better}


@dataclass(frozen=True)
class Study:
    id: str
    title: str             # the paper's title
    caption: str           # the tables' title line
    title_phrases: tuple   # how a plan's title names the paper
    parts: tuple
    metrics: tuple
    stages: dict           # stage → its job's main output, relative to the results dir
    unavailable_parts: tuple = ()  # ((phrases, reason), ...): asked for by plans, not ablatable

    def part(self, pid: str) -> Part:
        return next(p for p in self.parts if p.id == pid)

    def part_by_key(self, key: str) -> Part:
        return next(p for p in self.parts if p.key == key)

    @property
    def ablatable(self) -> dict:
        return {p.key: p.description for p in self.parts}

    @property
    def metric_records(self) -> dict:
        return {m.id: m.record() for m in self.metrics}

    def labels(self, key: str) -> dict:
        """config value → label of the choice part at `key`."""
        return {v: o.label for v, o in self.part_by_key(key).values.items()}


RANKCLIP = Study(
    id="rankclip",
    title="RankCLIP: Ranking-Consistent Language-Image Pretraining",
    caption="RankCLIP: Ranking-Consistent Language-Image Pretraining",
    title_phrases=("rankclip", "ranking consistent language image pretraining"),
    parts=(
        Part("rank_weight", "loss.rank_weight",
             "ranking-consistency loss weight λ (in-modal and cross-modal)",
             ("ranking loss weight", "rank weight", "ranking consistency weight", "λ", "lambda",
              "weight factor ranking"),
             lo=0.0),
        Part("decay", "loss.decay", "positional decay µ(k) of the list-wise ranking loss",
             ("decaying factor", "decay factor", "decay function", "µ", "mu", "positional decay",
              "ranking loss decay"),
             values={
                 "constant": Value("constant 1", ("constant", "no decay", "uniform"), ("1",)),
                 "inv_k": Value("1/k", ("inverse rank", "reciprocal rank"), ("1/k",)),
                 "inv_k_plus_1": Value("1/(k+1)", (), ("1/(k+1)",)),
                 "exp_neg_k": Value("exp(-k)", ("exponential decay", "exponential"),
                                    ("exp(-k)",)),
                 "inv_log_k_plus_1": Value("1/log(k+1)", ("logarithmic decay", "dcg",
                                                          "log discount"), ("1/log(k+1)",)),
             }),
    ),
    metrics=(
        Metric("zeroshot_top1", "Zero-shot Top-1 Accuracy", "%", True,
               ("zeroshot top1", "top1 accuracy", "top1")),
        Metric("zeroshot_top3", "Zero-shot Top-3 Accuracy", "%", True,
               ("zeroshot top3", "top3 accuracy", "top3")),
        Metric("zeroshot_top5", "Zero-shot Top-5 Accuracy", "%", True,
               ("zeroshot top5", "top5 accuracy", "top5")),
    ),
    stages={
        "rankclip_train": "rankclip/train/{h}/s{seed}/model.pt",
        "rankclip_eval": "rankclip/eval/{h}/s{seed}/metrics.json",
    },
    unavailable_parts=(
        (("patch size", "patch"), "the study does not ablate the image tower's patch size: it "
         "is part of the fixed model architecture (model.cfg.vision_cfg.patch_size)"),
        (("batch size",), "the study does not ablate the batch size (train.batch_size is "
         "shared by every variant)"),
    ),
)

# PC-CLIP's own evaluation (dsam99/pc_clip run.py): zero-shot classification datasets and
# difference-based classification tasks, id → the name its table column gives; one column each
# where the paper scale sets eval.benchmarks (mmablate.studies.pcclip.benchmarks reads them)
PCCLIP_ZEROSHOT = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "awa2": "AwA2",
                   "eurosat": "EuroSAT", "sun397": "SUN397", "cub": "CUB", "flowers": "Flowers102"}
PCCLIP_DIFFERENCE = {"awa2_size": "AwA2 size", "cub": "CUB", "cifar100_size": "CIFAR-100 size",
                     "flowers_color": "Flowers102 colour"}

PCCLIP = Study(
    id="pcclip",
    title="Finetuning CLIP to Reason about Pairwise Differences (PC-CLIP)",
    caption="Finetuning CLIP to Reason about Pairwise Differences (PC-CLIP)",
    title_phrases=("reason pairwise differences", "pcclip", "pairwise comparison clip"),
    parts=(
        Part("encoders", "finetune.encoders",
             "which encoders are finetuned (text only, or text and image jointly)",
             ("finetuning strategy", "encoder finetuning", "finetuned encoders",
              "which encoders", "image encoder fixed", "joint finetuning", "encoders updated"),
             values={
                 "text": Value("text encoder only",
                               ("text encoder only", "text only", "only text", "text encoder",
                                "image encoder frozen", "image encoder fixed")),
                 "text_image": Value("text + image encoders",
                                     ("text encoder image encoder", "joint", "both encoders",
                                      "both", "image encoder")),
             }),
        Part("combine", "finetune.combine",
             "how the two image embeddings are combined (subtraction, concatenation, "
             "element-wise multiplication)",
             ("combine image embeddings", "combination operation", "difference operation",
              "pair combination", "difference vector"),
             values={
                 "subtract": Value("subtraction", ("subtraction", "subtract", "difference",
                                                   "minus")),
                 "concat": Value("concatenation", ("concatenation", "concatenate", "concat")),
                 "multiply": Value("element-wise multiplication",
                                   ("multiplication", "multiply", "product", "hadamard")),
             }),
        Part("captioner", "captions.captioner", "language model writing the difference captions",
             ("llm", "language model", "captioner", "caption generator",
              "text descriptions generating", "difference captions"),
             values={
                 "llama2_chat": Value("LLaMA-2-chat", ("llama", "llama2", "llama2 chat",
                                                       "llama 2")),
                 "gpt": Value("GPT-3", ("gpt", "gpt2", "gpt3", "gpt 3", "gpt 2", "decoder only")),
                 "bert": Value("BERT", ("bert", "masked language model")),
                 "t5": Value("T5", ("t5", "flan t5", "encoder decoder")),
                 "template": Value("template (ground truth)",
                                   ("template", "ground truth captions", "rule based captions")),
             },
             unavailable=(
                 (("gpt4", "gpt4o", "gpt 4", "chatgpt", "claude", "gemini", "api", "openai"),
                  "GPT-4-class and other API-only models have no released weights; such a "
                  "model " + OFFLINE),
             )),
        Part("loss", "finetune.loss", "loss aligning the combined image vector with the "
             "difference caption",
             ("loss function", "finetuning loss", "training objective", "loss"),
             values={
                 "contrastive": Value("contrastive (CLIP)", ("contrastive", "clip loss",
                                                             "infonce")),
                 "squared": Value("squared (MSE)", ("squared", "mse", "l2 loss")),
                 "hinge": Value("hinge", ("hinge", "margin")),
             }),
    ),
    metrics=(
        Metric("diff_acc", "Difference-based Classification Accuracy", "%", True,
               ("difference classification", "difference based classification",
                "pairwise difference accuracy", "diff acc")),
        Metric("diff_mc_acc", "Difference-based Multiple-choice Accuracy", "%", True),
        Metric("zeroshot_acc", "Zero-shot Classification Accuracy", "%", True,
               ("zeroshot classification", "zeroshot accuracy")),
        Metric("clipscore", "CLIPScore", "", True, ("clipscore", "clip score")),
        Metric("arithmetic_acc", "Embedding Arithmetic Top-1", "%", True,
               ("embedding arithmetic", "arithmetic")),
        *(Metric(f"zeroshot_acc_{k}", f"Zero-shot Top-1 ({n})", "%", True)
          for k, n in PCCLIP_ZEROSHOT.items()),
        *(Metric(f"diff_acc_{k}", f"Difference-based Classification ({n})", "%", True)
          for k, n in PCCLIP_DIFFERENCE.items()),
    ),
    stages={
        "pcclip_pairs": "pcclip/pairs/{h}/pairs.csv",
        "pcclip_captioner": "pcclip/captioner/{h}/summary.json",
        "pcclip_captions": "pcclip/captions/{h}/captions.csv",
        "pcclip_embed": "pcclip/embed/{h}/s{seed}/embeddings.pt",
        "pcclip_finetune": "pcclip/finetune/{h}/s{seed}/model.pt",
        "pcclip_eval": "pcclip/eval/{h}/s{seed}/metrics.json",
    },
)

_TWIN = " (world twin)"
PAIRRANK = Study(
    id="pairrank",
    title="Effective Text-to-Image Alignment with Quality Aware Pair Ranking",
    caption="Effective Text-to-Image Alignment with Quality Aware Pair Ranking",
    title_phrases=("quality aware pair ranking", "text image alignment pair ranking"),
    parts=(
        Part("quality", "selection.quality", "quality metric Q used to rank preference pairs",
             ("quality metric", "quality score formulation", "pair quality",
              "quality formulation"),
             values={
                 "product": Value("ψw·(1−ψl)", ("product",), ("ψ(xw/c) * (1 - ψ(xl/c))",)),
                 "difference": Value("ψw−ψl", ("difference",), ("ψ(xw/c) - ψ(xl/c)",)),
                 "ratio": Value("ψw/(ψl+ε)", ("ratio",), ("ψ(xw/c) / (ψ(xl/c) + ε)",
                                                          "ψ(xw/c) / ψ(xl/c)")),
             }, noun="quality metric"),
        Part("threshold", "selection.threshold",
             "how many of the ranked pairs are kept for Diffusion-DPO",
             ("data selection", "selection threshold", "threshold", "selection strategy",
              "top 5.33%", "selected fraction"),
             values={
                 "fixed": Value("fixed top 5.33%", ("fixed", "top 5.33%", "fixed top fraction")),
                 "dynamic": Value("dynamic (Otsu split)", ("dynamic", "percentile",
                                                           "quality score distribution")),
                 "adaptive": Value("adaptive (validation)", ("adaptive",
                                                             "validation performance")),
             }),
    ),
    metrics=(
        Metric("aesthetic", "Aesthetic" + _TWIN, "", True, ("aesthetic", "aesthetic score")),
        Metric("image_reward", "ImageReward" + _TWIN, "", True, ("image reward", "imagereward")),
        Metric("pickscore", "PickScore" + _TWIN, "", True, ("pickscore", "pick score")),
        Metric("hpsv2", "HPSv2" + _TWIN, "", True,
               ("hpsv2", "hps v2", "hps", "human preference score")),
        Metric("oracle", "World oracle colour alignment", "%", True),
    ),
    stages={
        "pairrank_world": "pairrank/world/{h}/summary.json",
        "pairrank_base": "pairrank/base/{h}/t2i.json",
        "pairrank_reward": "pairrank/reward/{h}/model.pt",
        "pairrank_score": "pairrank/score/{h}/scores.npz",
        "pairrank_select": "pairrank/select/{h}/selection.json",
        "pairrank_dpo": "pairrank/dpo/{h}/s{seed}/lora/adapter.pt",
        "pairrank_eval": "pairrank/eval/{h}/s{seed}/metrics.json",
        "pairrank_distfig": "pairrank/distfig/{h}/quality_distributions.png",
    },
)

MMALIGN = Study(
    id="mmalign",
    title="Understanding Alignment in Multimodal LLMs: A Comprehensive Study",
    # the tables' title names the two methods the plan ablates (as the tables always have)
    caption="Understanding Alignment in Multimodal LLMs (BDHS, Mixed-DPO)",
    title_phrases=("alignment multimodal llms", "understanding alignment multimodal", "bdhs",
                   "mixed dpo"),
    parts=(
        Part("gamma", "bdhs.gamma",
             "γ: weight of the external non-preferred response in the averaged DPO loss "
             "(1 − γ on the BDHS one), Eq. 5",
             ("bdhs", "γ", "gamma", "bdhs mixing", "averaged dpo loss", "integration balance"),
             lo=0.0, hi=1.0, symbol="γ (bdhs.gamma)"),
        Part("mix_p", "mixed_dpo.p",
             "p: probability that an example is its offline pair (else an online pair sampled "
             "from the policy and ranked by the judge), Eq. 4",
             ("mixeddpo", "mixed dpo", "mixing probability", "offline online", "probability p"),
             lo=0.0, hi=1.0, named={1.0: ("fully offline",), 0.0: ("fully online",)},
             symbol="p (mixed_dpo.p)"),
    ),
    metrics=(
        Metric("pope", "POPE F1 (avg of 3 splits)", "%", True, ("pope",)),
        Metric("pope_acc", "POPE accuracy", "%", True),
        Metric("pope_yes_ratio", "POPE yes-ratio", "%", False),
        Metric("mmhal", "MMHAL score (0-6)", "", True, ("mmhal", "mmhal bench")),
        Metric("mmhalv", "MMHALv hallucination rate", "%", False, ("mmhalv",)),
        Metric("llavaw", "LLaVA-W relative score", "%", True,
               ("llavaw", "llava wild", "llava bench")),
        Metric("vqat", "VQA-T accuracy", "%", True, ("vqat", "textvqa", "vqa text")),
        Metric("gqa", "GQA accuracy", "%", True, ("gqa",)),
        Metric("mmvet", "MM-Vet score", "%", True, ("mmvet", "mm vet")),
        Metric("recall_coco", "Recall-coco (object recall)", "%", True,
               ("recallcoco", "recall coco")),
        # informativeness beside hallucination (no plan names them; shown beside the plan's):
        # a model that stops describing scores "no hallucination" (issue 21)
        Metric("desc_words", "Description length (words)", "", True),
        Metric("desc_empty", "Descriptions naming no object", "%", False),
        Metric("mmhalv_holistic", "MMHALv, descriptions", "%", False),
        Metric("mmhalv_attribute", "MMHALv, attribute questions", "%", False),
    ),
    stages={
        "mmalign_data": "mmalign/data/{h}/summary.json",
        "mmalign_sft": "mmalign/sft/{h}/summary.json",
        "mmalign_bdhs": "mmalign/bdhs/{h}/bdhs.jsonl",
        "mmalign_dpo": "mmalign/dpo/{h}/s{seed}/metrics.json",
        "mmalign_eval": "mmalign/eval/{h}/metrics.json",
        "mmalign_bench": "mmalign/bench/{h}/metrics.json",
        "mmalign_merge": "mmalign/merge/{h}/metrics.json",
    },
    unavailable_parts=(
        (("llm backbone", "language backbone", "base llm"),
         "the study does not ablate the language backbone (the world model is fixed; the "
         "paper's LLaVA-1.6-7B is the paper scale's)"),
    ),
)

STUDY_SPECS = {s.id: s for s in (RANKCLIP, PCCLIP, PAIRRANK, MMALIGN)}
STUDY_IDS = tuple(STUDY_SPECS)
