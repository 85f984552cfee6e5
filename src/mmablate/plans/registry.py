"""What a plan can ask of each study: its ablatable parts, their values, its metrics.

One registry per study (all four, whether or not the study's package is in this checkout; this
module never imports a study package). A part = config key + the phrases that name it in a plan
(matched as sets of stemmed words, so word order, plurals, hyphens and small typos do not
matter) + a value parser. Phrases are written for what researchers call these parts in the
papers; `unavailable` entries name things a plan may ask for that this pipeline cannot run,
with the reason, so `plan check` refuses them instead of dropping or substituting them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .values import Choice, Number, Option

OFFLINE = ("is only reachable through a web API, and the pipeline runs offline (no hub or API "
           "access at any scale it ships)")


@dataclass
class Part:
    id: str                 # ablation id in the config
    key: str                # dotted config key the ablation replaces
    phrases: list           # how plans name this part
    values: object          # Number | Choice


@dataclass
class StudySpec:
    id: str
    title: str
    title_phrases: list
    parts: list
    metrics: dict           # metric id → phrases
    unavailable_parts: list = field(default_factory=list)  # [(phrases, reason)]

    def part(self, pid: str) -> Part:
        return next(p for p in self.parts if p.id == pid)


RANKCLIP = StudySpec(
    id="rankclip",
    title="RankCLIP: Ranking-Consistent Language-Image Pretraining",
    title_phrases=["rankclip", "ranking consistent language image pretraining"],
    parts=[
        Part("rank_weight", "loss.rank_weight",
             ["ranking loss weight", "rank weight", "ranking consistency weight", "λ", "lambda",
              "weight factor ranking"],
             Number(lo=0.0)),
        Part("decay", "loss.decay",
             ["decaying factor", "decay factor", "decay function", "µ", "mu", "positional decay",
              "ranking loss decay"],
             Choice({
                 "constant": Option(["constant", "no decay", "uniform"], ["1"]),
                 "inv_k": Option(["inverse rank", "reciprocal rank"], ["1/k"]),
                 "inv_k_plus_1": Option([], ["1/(k+1)"]),
                 "exp_neg_k": Option(["exponential decay", "exponential"], ["exp(-k)"]),
                 "inv_log_k_plus_1": Option(["logarithmic decay", "dcg", "log discount"],
                                            ["1/log(k+1)"]),
             })),
    ],
    metrics={
        "zeroshot_top1": ["zeroshot top1", "top1 accuracy", "top1"],
        "zeroshot_top3": ["zeroshot top3", "top3 accuracy", "top3"],
        "zeroshot_top5": ["zeroshot top5", "top5 accuracy", "top5"],
    },
    unavailable_parts=[
        (["patch size", "patch"], "the study does not ablate the image tower's patch size: it is "
         "part of the fixed model architecture (model.cfg.vision_cfg.patch_size)"),
        (["batch size"], "the study does not ablate the batch size (train.batch_size is shared "
         "by every variant)"),
    ],
)

PCCLIP = StudySpec(
    id="pcclip",
    title="Finetuning CLIP to Reason about Pairwise Differences (PC-CLIP)",
    title_phrases=["reason pairwise differences", "pcclip", "pairwise comparison clip"],
    parts=[
        Part("encoders", "finetune.encoders",
             ["finetuning strategy", "encoder finetuning", "finetuned encoders",
              "which encoders", "image encoder fixed", "joint finetuning", "encoders updated"],
             Choice({
                 "text": Option(["text encoder only", "text only", "only text",
                                 "text encoder", "image encoder frozen", "image encoder fixed"]),
                 "text_image": Option(["text encoder image encoder", "joint", "both encoders",
                                       "both", "image encoder"]),
             })),
        Part("combine", "finetune.combine",
             ["combine image embeddings", "combination operation", "difference operation",
              "pair combination", "difference vector"],
             Choice({
                 "subtract": Option(["subtraction", "subtract", "difference", "minus"]),
                 "concat": Option(["concatenation", "concatenate", "concat"]),
                 "multiply": Option(["multiplication", "multiply", "product", "hadamard"]),
             })),
        Part("captioner", "captions.captioner",
             ["llm", "language model", "captioner", "caption generator",
              "text descriptions generating", "difference captions"],
             Choice({
                 "llama2_chat": Option(["llama", "llama2", "llama2 chat", "llama 2"]),
                 "gpt": Option(["gpt", "gpt2", "gpt3", "gpt 3", "gpt 2", "decoder only"]),
                 "bert": Option(["bert", "masked language model"]),
                 "t5": Option(["t5", "flan t5", "encoder decoder"]),
             }, unavailable=[
                 (["gpt4", "gpt4o", "gpt 4", "chatgpt", "claude", "gemini", "api", "openai"],
                  "GPT-4-class and other API-only models have no released weights; such a model "
                  + OFFLINE),
             ])),
        Part("loss", "finetune.loss",
             ["loss function", "finetuning loss", "training objective", "loss"],
             Choice({
                 "contrastive": Option(["contrastive", "clip loss", "infonce"]),
                 "squared": Option(["squared", "mse", "l2 loss"]),
                 "hinge": Option(["hinge", "margin"]),
             })),
    ],
    metrics={
        "diff_acc": ["difference classification", "difference based classification",
                     "pairwise difference accuracy", "diff acc"],
        "zeroshot_acc": ["zeroshot classification", "zeroshot accuracy"],
        "clipscore": ["clipscore", "clip score"],
        "arithmetic_acc": ["embedding arithmetic", "arithmetic"],
    },
)

PAIRRANK = StudySpec(
    id="pairrank",
    title="Effective Text-to-Image Alignment with Quality Aware Pair Ranking",
    title_phrases=["quality aware pair ranking", "text image alignment pair ranking"],
    parts=[
        Part("quality", "selection.quality",
             ["quality metric", "quality score formulation", "pair quality", "quality formulation"],
             Choice({
                 "product": Option(["product"], ["ψ(xw/c) * (1 - ψ(xl/c))"]),
                 "difference": Option(["difference"], ["ψ(xw/c) - ψ(xl/c)"]),
                 "ratio": Option(["ratio"], ["ψ(xw/c) / (ψ(xl/c) + ε)",
                                             "ψ(xw/c) / ψ(xl/c)"]),
             })),
        Part("threshold", "selection.threshold",
             ["data selection", "selection threshold", "threshold", "selection strategy",
              "top 5.33%", "selected fraction"],
             Choice({
                 "fixed": Option(["fixed", "top 5.33%", "fixed top fraction"]),
                 "dynamic": Option(["dynamic", "percentile", "quality score distribution"]),
                 "adaptive": Option(["adaptive", "validation performance"]),
             })),
    ],
    metrics={
        "aesthetic": ["aesthetic", "aesthetic score"],
        "image_reward": ["image reward", "imagereward"],
        "pickscore": ["pickscore", "pick score"],
        "hpsv2": ["hpsv2", "hps v2", "hps", "human preference score"],
    },
)

MMALIGN = StudySpec(
    id="mmalign",
    title="Understanding Alignment in Multimodal LLMs: A Comprehensive Study",
    title_phrases=["alignment multimodal llms", "understanding alignment multimodal",
                   "bdhs", "mixed dpo"],
    parts=[
        Part("gamma", "bdhs.gamma",
             ["bdhs", "γ", "gamma", "bdhs mixing", "averaged dpo loss", "integration balance"],
             Number(lo=0.0, hi=1.0)),
        Part("mix_p", "mixed_dpo.p",
             ["mixeddpo", "mixed dpo", "mixing probability", "offline online", "probability p"],
             Number(lo=0.0, hi=1.0, named={1.0: ["fully offline"], 0.0: ["fully online"]})),
    ],
    metrics={
        "pope": ["pope"],
        "mmhal": ["mmhal", "mmhal bench"],
        "mmhalv": ["mmhalv"],
        "llavaw": ["llavaw", "llava wild", "llava bench"],
        "vqat": ["vqat", "textvqa", "vqa text"],
        "gqa": ["gqa"],
        "mmvet": ["mmvet", "mm vet"],
        "recall_coco": ["recallcoco", "recall coco"],
    },
    unavailable_parts=[
        (["llm backbone", "language backbone", "base llm"],
         "the study does not ablate the language backbone (the world model is fixed; the "
         "paper's LLaVA-1.6-7B is the paper scale's)"),
    ],
)

REGISTRY = {s.id: s for s in (RANKCLIP, PCCLIP, PAIRRANK, MMALIGN)}
