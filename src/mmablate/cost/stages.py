"""What one job of each stage computes, from its resolved stage config: a list of `Work` items
(a model, forward / train / generate, FLOPs per sample, how many samples, and where that count
came from).

Sample counts, in order of preference (the basis is carried to the output):
``data``      counted from the files when they are at hand (shard stats, parquet metadata,
              JSON records);
``config``    a ``num_samples``-style key of the config (steps × batch, n_train, …);
``published`` the dataset's published size, with its source;
``assumed``   a stated assumption (token lengths of texts that have not been read; fractions that
              are known only after an upstream job has run).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import models as M

# ---- published sizes -----------------------------------------------------------------------------
PUBLISHED_SIZES = {
    "cc3m_train": (3_318_333, "Sharma et al. 2018 (Conceptual Captions), training split: 3,318,333 "
                              "image–text pairs (a download recovers fewer: the shards' stats count "
                              "what arrived)"),
    "imagenet_val": (50_000, "Russakovsky et al. 2015 (ILSVRC-2012): 50,000 validation images"),
    "imagenet_classes": (1_000, "ILSVRC-2012: 1,000 classes (open_clip IMAGENET_CLASSNAMES)"),
    "pickapic_pairs": (851_293, "Wallace et al. 2023 (Diffusion-DPO), §5: Pick-a-Pic v2 has 851,293 "
                                "pairs without ties (959,040 rows with ties: the dataset card)"),
    "pickapic_prompts": (500, "yuvalkirstain/pickapic_v2 dataset card: validation_unique and "
                              "test_unique have 500 prompts each"),
    "povid_pairs": (17_000, "Zhou et al. 2024 (POVID): ~17K preference pairs"),
    "pope": (9_000, "Li et al. 2023 (POPE): 3 splits × 3,000 questions on 500 COCO val2014 images"),
    "mmhal": (96, "Sun et al. 2023 (MMHal-Bench): 96 questions"),
    "llavaw": (60, "Liu et al. 2023 (LLaVA-Bench in-the-wild): 60 questions"),
    "mmvet": (218, "Yu et al. 2023 (MM-Vet): 218 questions"),
    "vqat": (5_000, "Singh et al. 2019 (TextVQA): 5,000 validation questions"),
    "gqa": (12_578, "Hudson & Manning 2019 (GQA): 12,578 test-dev balanced questions"),
    "recall_coco": (500, "the 500 COCO val2014 images POPE asks about (recall_coco.subset: pope)"),
    "pcclip_eval_pairs": (1_000, "paper.yaml: pcclip-coco-eval-pairs --n-pairs 1000"),
    # PC-CLIP's benchmarks (studies/pcclip/benchmarks.py): the test images each one encodes
    "bench_cifar10": (10_000, "Krizhevsky 2009: CIFAR-10 test batch, 10,000 images"),
    "bench_cifar100": (10_000, "Krizhevsky 2009: CIFAR-100 test, 10,000 images"),
    "bench_eurosat": (2_700, "Helber et al. 2019: 27,000 EuroSAT RGB images; the authors' last 10 %"),
    "bench_sun397": (10_876, "Xiao et al. 2010: 108,754 SUN397 images; the authors' last 10 %"),
    "bench_flowers": (6_149, "Nilsback & Zisserman 2008: Flowers102 test split, 6,149 images"),
    "bench_cub": (5_794, "Wah et al. 2011: CUB-200-2011 test split, 5,794 images"),
    "bench_awa2": (7_913, "Xian et al. 2018: AwA2's 10 test classes, 7,913 images"),
}
# Lengths that are not in a config and are not read from the data here (each one says so)
ASSUMED = {
    "caption_words": (10.5, "COCO captions average ~10.5 words (Chen et al. 2015)"),
    "tokens_per_word": (1.3, "~1.3 subword tokens per English word"),
    "world_caption_words": (6, "a world caption is ~6 words (`a large red circle …`)"),
    "mmalign_prompt_tokens": (48, "chat template + question ≈ 48 tokens"),
    "mmalign_answer_tokens": (200, "a POVID answer ≈ 200 tokens (detailed descriptions)"),
    "world_prompt_tokens": (12, "a world question ≈ 12 tokens"),
    "world_answer_tokens": (12, "a world answer ≈ 12 tokens"),
    "image_hw": ((480, 640), "a 640×480 image (COCO's most common size) for LLaVA-1.6's "
                             "AnyRes tiles"),
}
SHORT_BENCH = ("pope", "vqat", "gqa")


@dataclass
class Count:
    n: float
    basis: str   # data | config | published | assumed
    note: str

    def __str__(self):
        return f"{self.basis}: {self.note}"


@dataclass
class Work:
    what: str
    mode: str              # train | forward | generate
    flops_per_sample: float
    samples: float
    basis: list = field(default_factory=list)  # Count/notes behind `samples` and the shapes
    decode_steps: float = 0.0   # generate: forward passes that each read all weights once
    weight_bytes: float = 0.0   # generate: bytes of weights read per decode step (bf16)
    unit: str = "sample"

    @property
    def flops(self) -> float:
        return self.flops_per_sample * self.samples


@dataclass
class JobWork:
    items: list
    notes: list = field(default_factory=list)
    priced: bool = True
    resumable: bool = False


BYTES_BF16 = 2


# ---- helpers -------------------------------------------------------------------------------------
def _upstream_cfg(P, path: str, stage: str):
    """The stage config of the `stage` job whose output or directory `path` is (None if none)."""
    j = P.job_of(str(path))
    if j and j[0] == stage:
        return P.stages.get(stage, {}).get(j[1])
    job = P.job_at(stage, str(path))
    return P.stages[stage][job.hash] if job else None


def _exists(p) -> bool:
    return bool(p) and Path(str(p)).exists()


def _tokens(words: float) -> int:
    return int(math.ceil(words * ASSUMED["tokens_per_word"][0]))


def _gen(what, per_sample_flops, n: Count, new_tokens, batch, weight_params, extra=(),
         unit="sample"):
    """Greedy generation of `new_tokens` per sample in batches of `batch`: each decoding step
    reads every weight once for the whole batch (the memory-bound side of the estimate)."""
    return Work(what, "generate", per_sample_flops, n.n, [n, *extra],
                decode_steps=n.n * new_tokens / max(1, batch),
                weight_bytes=weight_params * BYTES_BF16, unit=unit)


def _resumable(cfg) -> bool:
    s = json.dumps(cfg)
    return '"ckpt_every"' in s


# ---- rankclip -------------------------------------------------------------------------------------
def train_samples_rankclip(P, cfg) -> tuple[int, Count, Count]:
    """(steps, samples per step, data size) of a RankCLIP training job."""
    from ..data import shards as S
    from ..studies.rankclip.train import resolve_steps

    tc, d = cfg["train"], cfg["data"]
    eff = int(tc.get("effective_batch") or tc["batch_size"])
    world = _upstream_cfg(P, d["root"], "world")
    if world is not None:
        n = Count(world["n_train"], "config", f"world.n_train = {world['n_train']:,}")
    elif d.get("train_csv") and _exists(Path(d["root"]) / d["train_csv"]):
        import pandas as pd

        rows = len(pd.read_csv(Path(d["root"]) / d["train_csv"], sep=None, engine="python"))
        n = Count(rows, "data", f"{d['train_csv']}: {rows:,} rows")
    elif d.get("num_samples"):
        n = Count(int(d["num_samples"]), "config", f"data.num_samples = {int(d['num_samples']):,}")
    else:
        counts = None
        if _exists(d["root"]):
            try:
                counts = S.shard_counts(S.expand_shards(d["train_shards"], d["root"]))
            except Exception:  # noqa: BLE001 - unreadable stats: fall back to the published size
                counts = None
        if counts:
            n = Count(sum(counts), "data", f"{len(counts)} shards' _stats.json: {sum(counts):,}")
        else:
            v, src = PUBLISHED_SIZES["cc3m_train"]
            n = Count(v, "published", src)
    steps = resolve_steps(tc, int(n.n), eff) if tc.get("steps") is None else int(tc["steps"])
    return steps, Count(eff, "config", f"batch {eff}"), n


def rankclip_train(P, h, cfg, seed):
    steps, eff, n = train_samples_rankclip(P, cfg)
    mb = cfg["model"]
    f = M.clip_flops(mb, "image", "all") + M.clip_flops(mb, "text", "all")
    how = (f"{steps:,} steps = {cfg['train']['epochs']} epochs × ⌊{int(n.n):,} / {int(eff.n)}⌋"
           if cfg["train"].get("steps") is None else f"train.steps = {steps:,}")
    return JobWork([Work(f"{mb['arch']} image+text fwd+bwd", "train", f, steps * eff.n,
                         [Count(steps * eff.n, "config", how + f" × batch {int(eff.n)}"), n], unit="pair")],
                   resumable=_resumable(cfg))


def _imagenet_images(root, sub) -> Count:
    d = Path(str(root)) / str(sub)
    if d.is_dir():
        n = sum(1 for c in d.iterdir() if c.is_dir() for _ in c.iterdir())
        if n:
            return Count(n, "data", f"{d}: {n:,} images")
    v, src = PUBLISHED_SIZES["imagenet_val"]
    return Count(v, "published", src)


def rankclip_eval(P, h, cfg, seed):
    mb, ev = cfg["model"], cfg["eval"]
    world = _upstream_cfg(P, cfg["data"]["root"], "world")
    if ev.get("class_source", "files") == "imagenet1k":
        import open_clip

        n_cls = len(open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES)
        n_tpl = len(open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
        prompts = Count(n_cls * n_tpl, "data", f"open_clip: {n_cls} classes × {n_tpl} templates")
        images = _imagenet_images(cfg["data"]["root"], ev.get("classify_dir", "val"))
        if ev.get("limit_per_class") and images.n > n_cls * ev["limit_per_class"]:
            images = Count(n_cls * ev["limit_per_class"], "config",
                           f"eval.limit_per_class {ev['limit_per_class']} × {n_cls} classes "
                           f"({images})")
    else:
        n_cls = len(world["colours"]) * len(world["shapes"]) if world else None
        if n_cls is None:
            return JobWork([], ["class files not at hand"], priced=False)
        prompts = Count(n_cls * len(ev["templates"]), "config",
                        f"{n_cls} world classes × {len(ev['templates'])} templates")
        images = Count(n_cls * world["n_classify_per_class"], "config",
                       f"{n_cls} classes × world.n_classify_per_class")
    return JobWork([Work(f"{mb['arch']} image fwd", "forward", M.clip_flops(mb, "image"),
                         images.n, [images], unit="image"),
                    Work(f"{mb['arch']} text fwd (class prompts)", "forward",
                         M.clip_flops(mb, "text"), prompts.n, [prompts], unit="prompt")])


# ---- pcclip ---------------------------------------------------------------------------------------
def _pairs(P, path):
    return _upstream_cfg(P, path, "pcclip_pairs") or {}


def _n_train_pairs(P, path) -> Count:
    pc = _pairs(P, path)
    return Count(pc.get("n_train", 0), "config", f"pairs.n_train = {pc.get('n_train', 0):,}")


def _n_eval_pairs(P, path) -> Count:
    pc = _pairs(P, path)
    if pc.get("source") == "coco":
        p = pc.get("eval_csv")
        if _exists(p) and Path(p).stat().st_size:
            import pandas as pd

            try:
                rows = len(pd.read_csv(p))
                return Count(rows, "data", f"{p}: {rows:,} pairs")
            except Exception:  # noqa: BLE001 - an unreadable file: the stated size
                pass
        v, src = PUBLISHED_SIZES["pcclip_eval_pairs"]
        return Count(v, "published", src)
    return Count(pc.get("n_eval", 0), "config", f"pairs.n_eval = {pc.get('n_eval', 0):,}")


def _prompt_tokens(P, spec, pairs_path) -> tuple[int, Count]:
    coco = _pairs(P, pairs_path).get("source") == "coco"
    words = ASSUMED["caption_words" if coco else "world_caption_words"]
    n = _tokens(len(spec["prompt"].replace("{a}", " ").replace("{b}", " ").split()) + 2 * words[0])
    return n, Count(n, "assumed", f"prompt ≈ {n} tokens (template + 2 captions; {words[1]}; "
                                  f"{ASSUMED['tokens_per_word'][1]})")


def pcclip_captioner(P, h, cfg, seed):
    spec = cfg["spec"]
    if spec.get("family") == "template":
        return JobWork([])
    tc = spec["train"]
    L, basis = _prompt_tokens(P, spec, cfg["pairs"])
    T = _tokens(ASSUMED["world_caption_words"][0])
    f = M.lm_flops(None, spec["arch"], spec["size"], L + T, T, train=True)
    n = tc["steps"] * tc["batch_size"]
    return JobWork([Work(f"tiny {spec['arch']} LM fwd+bwd", "train", f, n,
                         [Count(n, "config", f"{tc['steps']} steps × batch {tc['batch_size']}"),
                          basis])], resumable=_resumable(cfg))


def pcclip_captions(P, h, cfg, seed):
    spec = cfg["spec"]
    if spec.get("family") == "template":
        return JobWork([])
    n = _n_train_pairs(P, cfg["pairs"])
    L, basis = _prompt_tokens(P, spec, cfg["pairs"])
    T = int(cfg["max_new_tokens"])
    src = spec.get("model")
    name = src or f"tiny {spec['arch']}"
    params = M.lm_params(src, spec.get("arch"), spec.get("size"))
    if spec["family"] == "masked":  # slot by slot: one forward of the whole sequence per slot
        slots = int(spec.get("slots", 12))
        f = slots * M.lm_flops(src, spec.get("arch"), spec.get("size"), L + slots)
        return JobWork([_gen(f"{name} fill {slots} slots", f, n, slots, cfg["batch_size"], params,
                             [basis], unit="pair")])
    dec = T if spec["family"] == "seq2seq" else 0
    f = M.lm_flops(src, spec.get("arch"), spec.get("size"), L + (0 if dec else T), dec)
    return JobWork([_gen(f"{name} generate ≤{T} tokens", f, n, T, cfg["batch_size"], params,
                         [basis, Count(T, "config", f"≤ max_new_tokens {T} (upper bound)")],
                         unit="pair")])


def pcclip_embed(P, h, cfg, seed):
    mb = cfg["model"]
    pc = _pairs(P, cfg["pairs"])
    ev = _n_eval_pairs(P, cfg["pairs"])
    if pc.get("source") == "coco":
        n = Count(pc["n_images"] + 2 * ev.n, "config",
                  f"pairs.n_images {pc['n_images']:,} + ≤ 2 × {int(ev.n):,} eval-pair images")
    else:
        n = Count(2 * (pc.get("n_train", 0) + ev.n), "config",
                  "≤ 2 images × (n_train + n_eval) pairs (upper bound: distinct images)")
    return JobWork([Work(f"{mb['arch']} image fwd", "forward", M.clip_flops(mb, "image"), n.n,
                         [n])])


def pcclip_finetune(P, h, cfg, seed):
    from ..studies.pcclip.finetune import budget

    fc, mb = cfg["finetune"], cfg["model"]
    n = _n_train_pairs(P, cfg["pairs"])
    eff = int(fc.get("effective_batch") or fc["batch_size"])
    steps, _ = budget(fc, int(n.n), eff)
    trainable = fc.get("trainable", "transformer")
    train = "transformer" if trainable == "transformer" else "all"
    f = M.clip_flops(mb, "text", train)
    items = [Work(f"{mb['arch']} text fwd+bwd ({trainable})", "train", f, steps * eff,
                  [Count(steps * eff, "config", f"{steps:,} steps × batch {eff}"),
                   Count(n.n, "config", f"{n.note} (before the caption filter: an upper bound)")])]
    if "image" in str(fc.get("encoders", "text")):
        items.append(Work(f"{mb['arch']} image fwd+bwd (2 images a pair)", "train",
                          2 * M.clip_flops(mb, "image", "all"), steps * eff,
                          [Count(steps * eff, "config", "the same pairs")]))
    return JobWork(items, resumable=_resumable(cfg))


def pcclip_eval(P, h, cfg, seed):
    mb, ev = cfg["model"], cfg["eval"]
    pairs = _n_eval_pairs(P, cfg["pairs"])
    texts = pairs.n * (1 + int(ev.get("n_distractors", 0)))
    items = [Work(f"{mb['arch']} text fwd (difference captions)", "forward",
                  M.clip_flops(mb, "text"), texts,
                  [pairs, Count(texts, "config", f"× (1 + n_distractors {ev.get('n_distractors', 0)})")])]
    ft = cfg.get("finetune")
    ft = (P.stages["pcclip_finetune"][ft].get("finetune") or {}) if isinstance(ft, str) else (ft or {})
    if "image" in str(ft.get("encoders", "")):
        items.append(Work(f"{mb['arch']} image fwd (pair images)", "forward",
                          M.clip_flops(mb, "image"), 2 * pairs.n, [pairs]))
    if ev.get("classify_root"):
        images = _imagenet_images(ev["classify_root"], ev.get("classify_dir", "val"))
        n_cls = PUBLISHED_SIZES["imagenet_classes"]
        cls = Count(n_cls[0] * len(ev["templates"]), "published",
                    f"{n_cls[1]} × {len(ev['templates'])} templates")
    else:
        world = _upstream_cfg(P, cfg.get("world_root") or "", "world")
        if world is None:
            return JobWork(items, ["zero-shot set not at hand"])
        nc = len(world["colours"]) * len(world["shapes"])
        images = Count(nc * world["n_classify_per_class"], "config",
                       f"{nc} world classes × n_classify_per_class")
        cls = Count(nc * len(ev["templates"]), "config", f"{nc} classes × templates")
    items += [Work(f"{mb['arch']} image fwd (zero-shot)", "forward", M.clip_flops(mb, "image"),
                   images.n, [images]),
              Work(f"{mb['arch']} text fwd (class prompts)", "forward", M.clip_flops(mb, "text"),
                   cls.n, [cls])]
    if ev.get("benchmarks"):
        items += _pcclip_bench_work(mb, ev["benchmarks"])
    return JobWork(items)


BENCH_CLASSES = {"cifar10": 10, "cifar100": 100, "eurosat": 10, "sun397": 397, "flowers": 102,
                 "cub": 200, "awa2": 10}  # each dataset's class count (one prompt each)


def _pcclip_bench_work(mb, b) -> list:
    """The authors' benchmarks: each zero-shot test set once; each difference task ≤ 100 images
    and ≤ 4,950 pairs a seed (`benchmarks.group_pairs`: 100 sampled, i < j)."""
    from ..studies.pcclip.benchmarks import DIFFERENCE, ZEROSHOT

    zs = list(b.get("zeroshot", ZEROSHOT))
    counts = [Count(PUBLISHED_SIZES[f"bench_{n}"][0], "published", PUBLISHED_SIZES[f"bench_{n}"][1])
              for n in zs]
    seeds, tasks = int(b.get("seeds", 5)), len(b.get("difference", DIFFERENCE))
    n_img = sum(c.n for c in counts) + tasks * seeds * 100
    n_cls = sum(BENCH_CLASSES[n] for n in zs)
    n_txt = tasks * seeds * 4_950 + n_cls
    basis = counts + [Count(tasks * seeds * 100, "config",
                            f"{tasks} difference tasks × {seeds} seeds × ≤ 100 images")]
    return [Work(f"{mb['arch']} image fwd (PC-CLIP benchmarks)", "forward",
                 M.clip_flops(mb, "image"), n_img, basis),
            Work(f"{mb['arch']} text fwd (benchmark prompts, difference texts)", "forward",
                 M.clip_flops(mb, "text"), n_txt,
                 [Count(n_txt, "config", f"{tasks} tasks × {seeds} seeds × ≤ 4,950 pairs (an "
                                         f"upper bound) + {n_cls} class prompts")])]


# ---- pairrank -------------------------------------------------------------------------------------
def _world_unet(P, model: dict):
    """(UNet: the world's config, a local SD pipeline directory or None for SD-1.5 by its hub
    id; text-encoder CLIP block or None)."""
    if model.get("kind") == "world":
        base = _upstream_cfg(P, model["dir"], "pairrank_base")
        return base["unet"], base["text_encoder"]["model"]
    sd = model.get("pretrained")
    return (str(sd) if M.sd_part_config(sd, "unet") else None), None


def _sd_dir(unet):
    return unet if isinstance(unet, str) else None


def _image_size(unet) -> int:
    """Pixels of an SD image: latent size × the VAE's downsampling (SD-1.5: 64 × 8)."""
    vae = M.sd_part_config(_sd_dir(unet), "vae")
    f8 = 2 ** (len(vae["block_out_channels"]) - 1) if vae else 8
    return int(M.unet_config(unet)["sample_size"]) * f8


def _text_flops(clip_block, unet=None) -> float:
    return M.clip_flops(clip_block, "text") if clip_block else M.sd_text_flops(_sd_dir(unet))


def _reward(P, r: dict) -> tuple[str, float]:
    """(name, FLOPs of one image + one prompt) of a reward model."""
    if r.get("source") == "twin":
        rc = _upstream_cfg(P, r["path"], "pairrank_reward")
        mb = rc["clip"]["model"]
        return f"world {rc['kind']} twin", M.clip_flops(mb, "image") + M.clip_flops(mb, "text")
    kind = r["kind"]

    def block(default):  # open_clip by name, or a local model config (clip_config)
        cc = r.get("clip_config")
        if cc and Path(cc).is_file():
            return {"arch": Path(cc).stem, "cfg": json.loads(Path(cc).read_text()),
                    "tokenizer": "open_clip"}
        return {"arch": r.get("clip_arch", default)}
    if kind == "pickscore" and M.local_config(r.get("model")) is not None:
        return "pickscore (local CLIP)", M.hf_clip_flops(r["model"])
    if kind in ("hpsv2", "pickscore"):  # PickScore_v1: a finetuned CLIP-ViT-H-14 (same shapes)
        mb = block("ViT-H-14")
        return f"{kind} ({mb['arch']})", M.clip_flops(mb, "image") + M.clip_flops(mb, "text")
    if kind == "aesthetic":  # an MLP on CLIP image embeddings (the MLP: negligible)
        mb = block("ViT-L-14")
        return f"aesthetic ({mb['arch']} image)", M.clip_flops(mb, "image")
    if kind == "image_reward":
        return "ImageReward (BLIP ViT-L/16 + BERT-base)", M.image_reward_flops()
    raise ValueError(f"cost: unknown reward kind {kind!r}")


def _pickapic_pairs(path) -> Count:
    if _exists(path):
        try:
            import pyarrow.dataset as ds

            n = ds.dataset(str(path), format="parquet").count_rows()
            if n:
                return Count(n, "data", f"{path}: {n:,} rows (ties included: an upper bound)")
        except Exception:  # noqa: BLE001 - unreadable: the published size
            pass
    v, src = PUBLISHED_SIZES["pickapic_pairs"]
    return Count(v, "published", src)


def _world_pairs(P, path) -> Count | None:
    w = _upstream_cfg(P, str(Path(str(path)).parent), "pairrank_world")
    if w is None:
        return None
    return Count(w["n_pairs"], "config", f"pairrank world.n_pairs = {w['n_pairs']:,}")


def pairrank_score(P, h, cfg, seed):
    n = _world_pairs(P, cfg["pairs"]) or _pickapic_pairs(cfg["pairs"])
    name, f1 = _reward(P, cfg["reward"])
    # both images of every pair, the prompt once per image (scored as (image, prompt) pairs)
    return JobWork([Work(f"ψ = {name}: 2 images + prompt a pair", "forward", 2 * f1, n.n, [n],
                         unit="pair")],
                   resumable=True, notes=["resumes per shard"])


def pairrank_dpo(P, h, cfg, seed):
    tc = cfg["train"]
    unet, clipb = _world_unet(P, cfg["model"])
    eff = int(tc.get("effective_batch") or tc["batch_size"])
    steps = int(tc["steps"])
    pairs = Count(steps * eff, "config", f"{steps:,} steps × {eff} pairs")
    ck = bool(tc.get("grad_checkpointing"))
    lora = int(tc["lora_rank"])
    pol = M.unet_flops(unet, "train", lora, False)
    fwd = M.unet_flops(unet, "forward")
    per_pair = 2 * pol + (2 * fwd if ck else 0) + 2 * fwd + _text_flops(clipb, unet)
    what = (f"{'world' if clipb else 'SD'} UNet: LoRA r{lora} fwd+bwd on winner and "
            f"loser{' (+ checkpoint recompute)' if ck else ''}, reference fwd on both, text enc")
    items = [Work(what, "train", per_pair, pairs.n, [pairs], unit="pair")]
    if clipb is None:  # SD: the kept pairs' images VAE-encoded once into latent shards
        sel = _upstream_cfg(P, cfg["selection"], "pairrank_select") or {}
        total = _pickapic_pairs(sel.get("pairs"))
        frac = float(sel.get("top_fraction") or
                     P.config["studies"]["pairrank"]["selection"]["top_fraction"])
        basis = "config" if sel.get("threshold") == "fixed" else "assumed"
        note = (f"top_fraction {frac:g} × {int(total.n):,} pairs ({total})" if basis == "config"
                else f"threshold {sel.get('threshold')}: known after selection; priced at "
                     f"top_fraction {frac:g} × {int(total.n):,}")
        kept = Count(frac * total.n, basis, note)
        items.append(Work("SD VAE encode (2 images a kept pair, once)", "forward",
                          2 * M.vae_flops("encode", _image_size(unet), _sd_dir(unet)), kept.n,
                          [kept], unit="pair"))
    return JobWork(items, resumable=_resumable(cfg))


def pairrank_base(P, h, cfg, seed):
    tc = cfg["train"]
    n = Count(tc["steps"] * tc["batch_size"], "config",
              f"{tc['steps']} steps × batch {tc['batch_size']}")
    f = M.unet_flops(cfg["unet"], "train") + _text_flops(cfg["text_encoder"]["model"])
    return JobWork([Work("world UNet fwd+bwd (+ text enc)", "train", f, n.n, [n])],
                   resumable=_resumable(cfg))


def _prompts(P, cfg) -> Count:
    p, split = cfg["prompts"], cfg["split"]
    w = _upstream_cfg(P, str(Path(str(p)).parent), "pairrank_world")
    if w is not None:
        k = "n_eval_prompts" if split == "eval" else "n_val_prompts"
        return Count(w[k], "config", f"pairrank world.{k} = {w[k]}")
    if _exists(p) and Path(p).stat().st_size:
        try:
            n = len(json.loads(Path(p).read_text())[split])
            return Count(n, "data", f"{p}: {n} {split} prompts")
        except Exception:  # noqa: BLE001 - unreadable: the published size
            pass
    v, src = PUBLISHED_SIZES["pickapic_prompts"]
    return Count(v, "published", src)


def pairrank_eval(P, h, cfg, seed):
    unet, clipb = _world_unet(P, cfg["model"])
    s = cfg["sampling"]
    prompts = _prompts(P, cfg)
    n = Count(prompts.n * cfg["per_prompt"], "config",
              f"{int(prompts.n)} prompts × per_prompt {cfg['per_prompt']}")
    cfg_x = 2 if float(s.get("guidance", 1)) > 1 else 1
    fwd = M.unet_flops(unet, "forward")
    per_img = s["steps"] * cfg_x * fwd + cfg_x * _text_flops(clipb, unet)
    if clipb is None:
        per_img += M.vae_flops("decode", _image_size(unet), _sd_dir(unet))
    items = [Work(f"{'world' if clipb else 'SD'} UNet: {s['steps']} steps × "
                  f"{cfg_x} (CFG){'' if clipb else ' + VAE decode'}", "forward", per_img,
                  n.n, [prompts, n], unit="image")]
    for m, r in sorted(cfg["metrics"].items()):
        name, f1 = _reward(P, r)
        items.append(Work(f"{m}: {name}", "forward", f1, n.n, [n], unit="image"))
    return JobWork(items)


# ---- mmalign --------------------------------------------------------------------------------------
def _llava(P, base: str, sft: str | None):
    """(base id or None, tiny block or None, colours, shapes, world?)"""
    if sft:
        s = P.stages["mmalign_sft"][sft]
        return None, s["model"], s["colours"], s["shapes"], True
    return base, None, None, None, False


def _lens(world: bool) -> tuple[int, int, list]:
    p = ASSUMED["world_prompt_tokens" if world else "mmalign_prompt_tokens"]
    a = ASSUMED["world_answer_tokens" if world else "mmalign_answer_tokens"]
    return p[0], a[0], [Count(p[0], "assumed", p[1]), Count(a[0], "assumed", a[1])]


def _img_tokens(lv):
    info = M.llava_info(*lv[:4], image_hw=ASSUMED["image_hw"][0])
    note = (f"{info['image_tokens']} image tokens from {info['tiles']} tiles "
            f"({ASSUMED['image_hw'][1]})" if lv[1] is None else
            f"{info['image_tokens']} image tokens ({info['tiles']} tile(s))")
    return info, Count(info["image_tokens"], "assumed" if lv[1] is None else "config", note)


def _llava_gen(lv, n: Count, prompt: int, new: int, batch: int, what: str, extra=(),
               unit="sample"):
    info, itok = _img_tokens(lv)
    f = M.llava_flops(*lv[:4], info["image_tokens"] + prompt + new, "forward",
                      image_hw=ASSUMED["image_hw"][0])
    return _gen(what, sum(f.values()), n, new, batch, info["params"], [itok, *extra], unit)


def _povid(pairs: dict, world_cfg) -> Count:
    if world_cfg is not None:
        return Count(world_cfg["n_pref"], "config", f"mmalign world.n_pref = {world_cfg['n_pref']}")
    p = pairs.get("file")
    if _exists(p):
        try:
            n = len(json.loads(Path(p).read_text()))
            return Count(n, "data", f"{p}: {n:,} pairs")
        except Exception:  # noqa: BLE001
            pass
    v, src = PUBLISHED_SIZES["povid_pairs"]
    return Count(v, "published", src)


def _mm_world(P, sft):
    if not sft:
        return None
    s = P.stages["mmalign_sft"][sft]
    return _upstream_cfg(P, str(Path(s["data"]["file"]).parent.parent), "mmalign_data")


def mmalign_bdhs(P, h, cfg, seed):
    lv = _llava(P, cfg["reference"], cfg.get("sft"))
    b = cfg["bdhs"]
    n = _povid(cfg["pairs"], _mm_world(P, cfg.get("sft")))
    prompt, answer, basis = _lens(lv[4])
    items = [_llava_gen(lv, n, prompt + answer // 2, int(b["max_new_tokens"]), b["batch_size"],
                        "LLaVA (image attention masked): cut answer + ≤ "
                        f"{b['max_new_tokens']} new tokens, one try a pair", basis, unit="pair")]
    if b.get("embedder") and not lv[4]:
        f = 2 * M.encoder_flops(b["embedder"], int(b["max_new_tokens"]))
        items.append(Work(f"{b['embedder'].split('/')[-1]} similarity (2 sentences)", "forward",
                          f, n.n, [n]))
    return JobWork(items, notes=[f"retries (≤ max_tries {b['max_tries']}) not counted"])


def _bench_counts(P, ecfg, names, world) -> dict:
    out = {}
    for name in names:
        if world is not None:
            out[name] = Count(world["n_eval"] * (3 if name == "pope" else 1), "assumed",
                              f"world: ~{world['n_eval']} benchmark images, one question each"
                              + (" per POPE split" if name == "pope" else ""))
            continue
        try:
            from ..studies.mmalign.evaluate import load_benchmarks

            recs = load_benchmarks({**ecfg, "limit": ecfg.get("limit")}, [name])
            k = sum(len(v) for v in recs.values())
            out[name] = Count(k, "data", f"{name}: {k:,} questions in the files")
        except Exception:  # noqa: BLE001 - files not at hand: the published size
            v, src = PUBLISHED_SIZES[name]
            out[name] = Count(v, "published", src)
        if ecfg.get("limit"):
            c = out[name]
            out[name] = Count(min(c.n, ecfg["limit"] * (3 if name == "pope" else 1)), "config",
                              f"eval.limit {ecfg['limit']} ({c})")
    return out


def _bench_items(P, lv, ecfg, names, world):
    prompt, _, basis = _lens(lv[4])
    items = []
    for name, n in _bench_counts(P, ecfg, names, world).items():
        new = int(ecfg["max_new_tokens_short" if name in SHORT_BENCH else "max_new_tokens"])
        items.append(_llava_gen(lv, n, prompt, new, int(ecfg.get("batch_size", 8)),
                                f"{name}: LLaVA answers, ≤ {new} tokens", [basis[0],
                                Count(new, "config", f"≤ {new} new tokens (upper bound)")],
                                unit="question"))
    return items


def _bench_model(P, model: str):
    """(LLaVA spec, sft hash) of a benchmark job's model: the SFT base, a DPO job's model (whose
    config names its base) or a hub id."""
    m = str(model)
    job = P.job_at("mmalign_sft", m)
    sft = job.hash if job else None
    if sft is None:
        dpo = P.job_at("mmalign_dpo", m)
        if dpo is not None:
            d = P.stages["mmalign_dpo"][dpo.hash]
            sft, m = d.get("sft"), d["model"]["base"]
    return _llava(P, m, sft), sft


def mmalign_bench(P, h, cfg, seed):
    lv, sft = _bench_model(P, cfg["model"])
    return JobWork(_bench_items(P, lv, cfg["eval"], [cfg["benchmark"]], _mm_world(P, sft)),
                   notes=["judge requests not priced (MMHal, LLaVA-W, MM-Vet)"])


def mmalign_eval(P, h, cfg, seed):
    sft = cfg.get("sft")
    lv = _llava(P, cfg["model"], sft)
    from ..studies.mmalign.evaluate import BENCHMARKS

    return JobWork(_bench_items(P, lv, cfg["eval"], list(BENCHMARKS), _mm_world(P, sft)))


def mmalign_sft(P, h, cfg, seed):
    tc = cfg["train"]
    lv = (None, cfg["model"], cfg["colours"], cfg["shapes"], True)
    info, itok = _img_tokens(lv)
    prompt, answer, basis = _lens(True)
    f = M.llava_flops(*lv[:4], info["image_tokens"] + prompt + answer, "train")
    vis_train = 3 * f["vision"]  # the tiny SFT trains the vision tower too: fwd + 2× for bwd
    n = Count(tc["steps"] * tc["batch_size"], "config", f"{tc['steps']} steps × batch {tc['batch_size']}")
    return JobWork([Work("tiny LLaVA fwd+bwd (vision tower: 3× its forward)", "train",
                         vis_train + f["projector"] * 3 + f["lm"], n.n, [n, itok, *basis])],
                   resumable=_resumable(cfg))


def mmalign_dpo(P, h, cfg, seed):
    tc = cfg["train"]
    sft = cfg.get("sft")
    lv = _llava(P, cfg["model"]["base"], sft)
    info, itok = _img_tokens(lv)
    prompt, answer, basis = _lens(lv[4])
    seq = info["image_tokens"] + prompt + answer
    n_seq = 3 if float(cfg["bdhs"].get("gamma", 0)) > 0 else 2
    lora = cfg["model"].get("lora")
    ck = bool(tc.get("grad_checkpointing"))
    pol = M.llava_flops(*lv[:4], seq, "train", lora=lora, checkpointing=ck,
                        image_hw=ASSUMED["image_hw"][0])
    ref = M.llava_flops(*lv[:4], seq, "forward", image_hw=ASSUMED["image_hw"][0])
    per = n_seq * (pol["vision"] + pol["projector"] + pol["lm"] + sum(ref.values()))
    eff = int(tc.get("effective_batch") or tc["batch_size"])
    n = Count(tc["steps"] * eff, "config", f"{tc['steps']:,} steps × {eff} examples")
    what = (f"LLaVA policy fwd+bwd{' (LoRA r%d)' % lora['r'] if lora else ''}"
            f"{' + recompute' if ck else ''} and reference fwd, {n_seq} sequences "
            f"(y⁺, y⁻{', BDHS' if n_seq == 3 else ''}) of {seq} tokens")
    items = [Work(what, "train", per, n.n, [n, itok, *basis], unit="example")]
    md = cfg.get("mixed_dpo") or {}
    p = float(md.get("p", 1.0))
    if p < 1:  # online pairs: two sampled responses per online example
        online = Count(2 * (1 - p) * n.n, "config",
                       f"2 responses × (1 − p = {1 - p:g}) × {int(n.n):,} examples (expected)")
        new = int(md.get("max_new_tokens", 32))
        items.append(_llava_gen(lv, online, prompt, new, int(md.get("batch_size", 16)),
                                f"online responses (policy samples ≤ {new} tokens)",
                                [basis[0], Count(new, "config", f"≤ {new} tokens (upper bound)")],
                                unit="response"))
    notes = ["judge requests of the online pairs not priced"] if p < 1 and not lv[4] else []
    ev = cfg.get("eval") or {}
    if ev.get("jobs", "per_model") == "per_model" and ev.get("benchmarks"):
        from ..studies.mmalign.evaluate import BENCHMARKS

        items += _bench_items(P, lv, ev, list(BENCHMARKS), _mm_world(P, sft))
        notes.append("benchmarks in the job (eval.jobs: per_model)")
    return JobWork(items, notes=notes, resumable=_resumable(cfg))


# ---- registry -------------------------------------------------------------------------------------
CPU_STAGES = {"world", "pcclip_pairs", "pairrank_world", "pairrank_select", "pairrank_distfig",
              "mmalign_data", "mmalign_merge"}  # no model: priced at zero GPU time
ESTIMATORS = {
    "rankclip_train": rankclip_train, "rankclip_eval": rankclip_eval,
    "pcclip_captioner": pcclip_captioner, "pcclip_captions": pcclip_captions,
    "pcclip_embed": pcclip_embed, "pcclip_finetune": pcclip_finetune, "pcclip_eval": pcclip_eval,
    "pairrank_base": pairrank_base, "pairrank_score": pairrank_score,
    "pairrank_dpo": pairrank_dpo, "pairrank_eval": pairrank_eval,
    "mmalign_sft": mmalign_sft, "mmalign_bdhs": mmalign_bdhs, "mmalign_dpo": mmalign_dpo,
    "mmalign_eval": mmalign_eval, "mmalign_bench": mmalign_bench,
}


def job_work(P, stage: str, h: str, seed) -> JobWork:
    cfg = P.stage(stage, h)
    if stage in CPU_STAGES:
        return JobWork([], ["no model (CPU stage)"])
    fn = ESTIMATORS.get(stage)
    if fn is None:
        return JobWork([], [f"no estimator for stage {stage}"], priced=False)
    return fn(P, h, cfg, seed)
