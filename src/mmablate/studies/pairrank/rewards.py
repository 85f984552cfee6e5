"""Reward models ψ and the four evaluation metrics: world twins (tiny) and paper-scale wrappers.

Every scorer maps (uint8 images [N, H, W, 3], prompts) → one score per image.

World twins, trained here with each metric's own recipe on the world's data (never the real
metric; their labels say "world twin"):

* ``pickscore`` — the world CLIP finetuned on preference pairs with PickScore's objective:
  softmax over the two images' scaled similarities to the prompt, cross-entropy against the
  label distribution, ties kept as 0.5/0.5. Score = logit_scale · cos.
* ``hpsv2`` — the world CLIP finetuned on preference pairs with ties dropped (HPSv2's pairwise
  objective on human preference pairs). Score = cos (HPSv2 reports the cosine).
* ``aesthetic`` — LAION's recipe: an MLP regression head on the frozen CLIP image embedding,
  MSE against 1–10 ratings (the world's AVA stand-in). Prompt-free.
* ``image_reward`` — ImageReward's recipe: a reward head on the frozen joint image–text features,
  trained with the pairwise ranking loss −log σ(r_w − r_l), then standardised by the mean and
  std of the training rewards (as ImageReward standardises its outputs).

Paper-scale wrappers load the published weights: LAION aesthetic MLP on open_clip ViT-L/14,
PickScore_v1 through transformers, HPSv2.1 on open_clip ViT-H-14. The pip packages ``hpsv2``
and ``image-reward`` (and torchmetrics' CLIPScore) do not work with transformers 5 (removed
imports; ``get_image_features`` now returns a model output), so they are wrapped here directly.
ImageReward's BLIP (ViT-L + BERT with cross-attention) is loaded into transformers' BLIP classes
from THUDM's ``ImageReward.pt`` by `image_reward.py` (its keys mapped, head and normalisation
kept).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, ConfigError
from ...util import write_atomic

KINDS = ("pickscore", "hpsv2", "aesthetic", "image_reward")
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (open_clip OPENAI_DATASET_MEAN/STD)
STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images, size: int):
    """uint8 [N, H, W, 3] → CLIP input: bicubic resize to `size`, CLIP normalisation (the same
    transform as open_clip's preprocess, on tensors so that thousands of tiny images are fast)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - m) / s


def _mlp(dims, dropout=0.0):
    import torch.nn as nn

    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Scorer:
    """``scorer(images, prompts)`` → float64 scores, in batches of `batch` images, under autocast
    in ``precision`` (fp16/bf16) where the model runs on CUDA (the CPU stays fp32).
    ``input_size``: the square size the model reads (streamed images are resized to it in the
    DataLoader workers; None: images are passed as decoded, as the world's twins read them)."""

    def __init__(self, kind, fn, label, input_size: int | None = None, device="cpu",
                 precision: str = "fp32"):
        self.kind, self.fn, self.label = kind, fn, label
        self.input_size, self.device, self.precision = input_size, str(device), precision

    def _autocast(self):
        import contextlib

        import torch

        if self.device.startswith("cuda") and self.precision in ("fp16", "bf16"):
            return torch.autocast("cuda", dtype={"fp16": torch.float16,
                                                 "bf16": torch.bfloat16}[self.precision])
        return contextlib.nullcontext()

    def __call__(self, images, prompts, batch: int = 256) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(images), batch):
                out.append(np.asarray(self.fn(images[i:i + batch], list(prompts[i:i + batch])),
                                      dtype=np.float64))
        return np.concatenate(out) if out else np.zeros(0)


# ---- world twins ----------------------------------------------------------------------------
def _clip(clip_cfg):
    from ...models import clip as clipm

    model, _, tok = clipm.build(clip_cfg["model"])
    clipm.load_weights(model, clip_cfg["weights"])
    return model, tok


def _image_size(model):
    s = model.visual.image_size
    return s[0] if isinstance(s, (tuple, list)) else s


def _pair_module(head):
    """head(w) − head(l) as one module (one forward through DDP per step)."""
    import torch

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, w, l):
            return self.head(w) - self.head(l)

    return Pair()


def _pair_scorer(clip):
    """The CLIP twin's three encodings of one step as one module (DDP needs one forward)."""
    import torch

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip

        def forward(self, toks, x0, x1):
            t = self.clip.encode_text(toks, normalize=True)
            i0 = self.clip.encode_image(x0, normalize=True)
            i1 = self.clip.encode_image(x1, normalize=True)
            return t, i0, i1, self.clip.logit_scale.exp()

    return Scorer()


def train_twin(cfg: dict, out, threads: int = 1, progress: bool = True) -> dict:
    """Trains one world twin (cfg["kind"]) and saves it to `out` (a torch file).

    The three training loops run on the training harness (`mmablate.training.harness`) with
    today's data order (indices drawn with replacement from one generator seeded ``seed``) and
    log steps; no checkpoints (``train.ckpt_every`` turns them on), no scheduler, no clipping
    unless ``train.max_grad_norm`` is set.
    """
    import torch
    import torch.nn.functional as F

    from ...data.pickapic import decode, read_table
    from ...training.harness import Harness, Tensors

    kind = cfg["kind"]
    if kind not in KINDS:
        raise ConfigError(f"reward kind {kind!r}: expected one of {list(KINDS)}")
    seed = cfg["seed"]
    tc = cfg["train"]
    h = Harness(tc, seed=seed, out_dir=Path(out).parent, where=f"rewards.train.{kind}",
                threads=threads, progress=progress)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    clip, tok = _clip(cfg["clip"])
    size = _image_size(clip)
    fit = dict(steps=tc["steps"], ckpt_every=tc.get("ckpt_every"), log_last=False,
               columns=["loss", "step"], summary_file=None)
    if kind == "aesthetic":
        df = read_table(cfg["data"], required=("jpg", "rating"))
        imgs = np.stack([decode(b, f"{cfg['data']}: row {k} (jpg)") for k, b in enumerate(df["jpg"])])
        y = torch.tensor(df["rating"].to_numpy(np.float32))
        with torch.no_grad():
            emb = F.normalize(clip.encode_image(clip_pixels(imgs, size)), dim=-1)
        head = _mlp([emb.shape[1], tc["hidden"], 16, 1], 0.1)
        h.setup(head, lambda m: torch.optim.AdamW(m.parameters(), lr=tc["lr"]))

        def step(batch):
            e, t = batch
            return {"loss": F.mse_loss(h.model(e).squeeze(1), t)}

        h.fit(step, Tensors(emb, y), order=h.sampled_order(len(y), g), log_every=20,
              desc="aesthetic twin", **fit)
        state = {"head": head.state_dict(), "hidden": tc["hidden"]}
    else:
        pairs_all = read_table(cfg["data"])
        l0 = torch.tensor(pairs_all["label_0"].to_numpy(np.float32))
        keep = np.arange(len(l0)) if kind == "pickscore" else np.where(l0.numpy() != 0.5)[0]
        im0 = np.stack([decode(pairs_all["jpg_0"].iloc[k], f"{cfg['data']}: row {k} (jpg_0)") for k in keep])
        im1 = np.stack([decode(pairs_all["jpg_1"].iloc[k], f"{cfg['data']}: row {k} (jpg_1)") for k in keep])
        x0, x1 = clip_pixels(im0, size), clip_pixels(im1, size)
        caps = pairs_all["caption"].astype(str).to_numpy()[keep].tolist()
        toks = tok(caps)
        target = torch.stack([l0[keep], 1 - l0[keep]], 1)
        if kind in ("pickscore", "hpsv2"):
            h.setup(_pair_scorer(clip), lambda m: torch.optim.AdamW(
                [p for p in m.clip.parameters() if p.requires_grad], lr=tc["lr"], weight_decay=0.1))

            def step(batch):
                tk, a, b, tg = batch
                t, i0, i1, s = h.model(tk, a, b)
                logits = s * torch.stack([(t * i0).sum(1), (t * i1).sum(1)], 1)
                return {"loss": -(tg * F.log_softmax(logits, 1)).sum(1).mean()}

            def clamp(_step):
                with torch.no_grad():
                    clip.logit_scale.clamp_(0, 4.6052)

            h.fit(step, Tensors(toks, x0, x1, target), order=h.sampled_order(len(caps), g),
                  log_every=10, after_step=clamp, desc=f"{kind} twin", **fit)
            state = {"clip": clip.state_dict()}
        else:  # image_reward
            with torch.no_grad():
                t = clip.encode_text(toks, normalize=True)
                e0 = clip.encode_image(x0, normalize=True)
                e1 = clip.encode_image(x1, normalize=True)
            f0, f1 = _joint(e0, t), _joint(e1, t)
            head = _mlp([f0.shape[1], tc["hidden"], 16, 1], 0.1)
            win0 = target[:, 0] > 0.5
            fw = torch.where(win0[:, None], f0, f1)
            fl = torch.where(win0[:, None], f1, f0)
            h.setup(_pair_module(head), lambda m: torch.optim.AdamW(m.head.parameters(), lr=tc["lr"]))

            def step(batch):
                return {"loss": -F.logsigmoid(h.model(*batch)).mean()}

            h.fit(step, Tensors(fw, fl), order=h.sampled_order(len(fw), g), log_every=20,
                  desc="image_reward twin", **fit)
            head.eval()
            with torch.no_grad():
                r = head(torch.cat([f0, f1]).to(h.device)).squeeze(1)
            state = {"head": head.state_dict(), "hidden": tc["hidden"],
                     "mean": float(r.mean()), "std": float(r.std())}
    log = h.log_rows
    if not h.is_main:
        return {"kind": kind, "rank": h.rank}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": kind, "clip_cfg": cfg["clip"], **state}, out)
    summary = {"kind": kind, "first_loss": log[0]["loss"], "final_loss": log[-1]["loss"],
               "wall_s": round(time.time() - h.t0, 2)}
    (out.parent / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _joint(img, txt):
    import torch

    return torch.cat([img, txt, img * txt], 1)


def load_twin(path, device: str = "cpu") -> Scorer:
    from ...util import load_torch_file

    st = load_torch_file(path, "reward model", weights_only=False)
    kind = st.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown reward kind {kind!r}")
    clip, tok = _clip(st["clip_cfg"])
    if "clip" in st:
        clip.load_state_dict(st["clip"])
    clip.eval().to(device)
    size = _image_size(clip)
    head = None
    if "head" in st:
        d = next(iter(st["head"].values())).shape[1]
        head = _mlp([d, st["hidden"], 16, 1], 0.1)
        head.load_state_dict(st["head"])
        head.eval().to(device)

    def fn(images, prompts):
        img = clip.encode_image(clip_pixels(images, size).to(device), normalize=True)
        if kind == "aesthetic":
            return head(img).squeeze(1).cpu().numpy()
        txt = clip.encode_text(tok(prompts).to(device), normalize=True)
        if kind == "image_reward":
            return ((head(_joint(img, txt)).squeeze(1) - st["mean"]) / st["std"]).cpu().numpy()
        cos = (img * txt).sum(1)
        return (clip.logit_scale.exp() * cos if kind == "pickscore" else cos).cpu().numpy()

    return Scorer(kind, fn, kind)


# ---- paper-scale wrappers --------------------------------------------------------------------
def _open_clip(rcfg):
    """(model, tokenizer): open_clip architecture ``clip_arch`` with ``clip_pretrained`` (an
    open_clip tag, or a checkpoint file). ``clip_config`` (optional): a model-config JSON file
    registered under that architecture's name first (a local config: the rehearsal's miniatures,
    or an architecture open_clip does not ship)."""
    from ...models import clip as clipm

    block = {"arch": rcfg["clip_arch"], "tokenizer": "open_clip",
             "pretrained": rcfg.get("clip_pretrained")}
    if rcfg.get("clip_config"):
        from ...util import read_json

        block["cfg"] = read_json(rcfg["clip_config"])
    model, _, tok = clipm.build(block)
    return model, tok



# Each returns (fn, input size): fn maps uint8 images [N, S, S, 3] (S = the input size, resized
# in the DataLoader workers with a bicubic shortest-side resize and centre crop, as the models'
# own preprocessing) and prompts to scores on `device`.
def _paper_aesthetic(rcfg, device="cpu"):
    """LAION improved aesthetic predictor: MLP (768→1024→128→64→16→1) on CLIP ViT-L/14 embeddings."""
    import torch
    import torch.nn as nn

    model, _ = _open_clip(rcfg)
    mlp = nn.Sequential(nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                        nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                        nn.Linear(16, 1))
    from ...util import load_torch_file

    state = load_torch_file(rcfg["head_weights"], "aesthetic predictor weights")
    try:
        mlp.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    except (RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{rcfg['head_weights']}: not the aesthetic predictor's layers.* "
                              f"state dict ({str(e)[:300]})") from None
    model.eval().to(device), mlp.eval().to(device)
    size = _image_size(model)

    def fn(images, prompts):
        img = model.encode_image(clip_pixels(images, size).to(device), normalize=True)
        return mlp(img.float()).squeeze(1).float().cpu().numpy()

    return fn, size


def _paper_pickscore(rcfg, device="cpu"):
    """PickScore_v1 (transformers CLIPModel): logit_scale · cos(text, image)."""
    from transformers import AutoModel, AutoProcessor

    proc = AutoProcessor.from_pretrained(rcfg["processor"])
    model = AutoModel.from_pretrained(rcfg["model"]).eval().to(device)

    def _t(o):  # transformers 5 returns a model output, not a tensor
        return o if hasattr(o, "norm") else o.pooler_output

    def fn(images, prompts):
        px = proc(images=list(images), return_tensors="pt").to(device)
        tx = proc(text=prompts, padding=True, truncation=True, max_length=77,
                  return_tensors="pt").to(device)
        i = _t(model.get_image_features(**px)).float()
        t = _t(model.get_text_features(**tx)).float()
        i, t = i / i.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
        return (model.logit_scale.exp() * (i * t).sum(1)).float().cpu().numpy()

    return fn, model.config.vision_config.image_size


def _paper_hpsv2(rcfg, device="cpu"):
    """HPSv2.1: open_clip ViT-H-14 with the HPS checkpoint; score = cos(text, image)."""
    from ...util import load_torch_file

    model, tok = _open_clip(rcfg)
    state = load_torch_file(rcfg["checkpoint"], "HPSv2 checkpoint", weights_only=False)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{rcfg['checkpoint']}: does not fit open_clip {rcfg['clip_arch']} "
                              f"({str(e)[:300]})") from None
    model.eval().to(device)
    size = _image_size(model)

    def fn(images, prompts):
        i = model.encode_image(clip_pixels(images, size).to(device), normalize=True).float()
        t = model.encode_text(tok(prompts).to(device), normalize=True).float()
        return (i * t).sum(1).cpu().numpy()

    return fn, size


def _paper_image_reward(rcfg, device="cpu"):
    """THUDM's ImageReward (``ImageReward.pt``) loaded into transformers' BLIP classes
    (`image_reward.py`)."""
    from .image_reward import load_image_reward

    model, tok = load_image_reward(rcfg["checkpoint"], rcfg.get("tokenizer", "bert-base-uncased"),
                                   rcfg.get("med_config"))
    model.eval().to(device)

    def fn(images, prompts):
        x = clip_pixels(images, model.image_size).to(device)
        t = tok(list(prompts), padding="max_length", truncation=True, max_length=35,
                return_tensors="pt").to(device)
        return model(x, t.input_ids, t.attention_mask).float().cpu().numpy()

    return fn, model.image_size


PAPER = {"aesthetic": _paper_aesthetic, "pickscore": _paper_pickscore, "hpsv2": _paper_hpsv2,
         "image_reward": _paper_image_reward}


def load_scorer(rcfg: dict, device: str = "cpu") -> Scorer:
    """A reward block: {"source": "twin", "path": ...} or {"source": "paper", "kind": ..., ...};
    the model runs on `device` (inputs and scores stay NumPy on the CPU), under autocast in
    the block's ``precision`` (fp32 / fp16 / bf16, CUDA only)."""
    if rcfg["source"] == "twin":
        sc = load_twin(rcfg["path"], device)
    elif rcfg["source"] == "paper":
        fn, size = PAPER[rcfg["kind"]](rcfg, device)
        sc = Scorer(rcfg["kind"], fn, rcfg["kind"], size)
    else:
        raise ConfigError(f"reward source {rcfg['source']!r}: expected 'twin' or 'paper'")
    sc.device, sc.precision = str(device), rcfg.get("precision", "fp32")
    return sc


def _shard_done(part: Path, f: Path, n_rows: int) -> bool:
    """Whether `part` is the complete score file of shard `f` (written atomically, so a file
    that loads and names the shard's size and row count is whole)."""
    if not part.is_file():
        return False
    try:
        with np.load(part) as z:
            return (int(z["n_rows"]) == n_rows and int(z["source_bytes"]) == f.stat().st_size
                    and len(z["winner"]) == len(z["loser"]) == int(z["n_kept"]))
    except Exception:
        return False


def score_pairs(cfg: dict, out, progress: bool = True) -> dict:
    """Scores both images of every pair once (ties dropped, winner first), shard by shard.

    The pairs stream (`data.pickapic.stream_pairs`: row-group units decoded and resized to the
    model's input size in ``num_workers`` DataLoader workers); pairs are scored in chunks of
    ``batch_size`` (the winners of a chunk, then its losers) on the job's device. Each input
    shard gets one score file ``shards/<k>-<name>.npz`` (written atomically); a killed job
    resumes at the first shard without one. The npz cache `out` (``winner``, ``loser`` in the
    global pair order, ``shard_counts``) concatenates them; the selection reads only that."""
    from tqdm import tqdm

    from ...data.pickapic import check_shard, shard_files, stream_pairs
    from ...device import torch_device

    t0 = time.time()
    files = shard_files(cfg["pairs"])
    metas = [check_shard(f) for f in files]  # every shard's columns, before any model loads
    scorer = load_scorer(cfg["reward"], torch_device())
    bs, nw = int(cfg.get("batch_size", 256)), int(cfg.get("num_workers", 0))
    parts = Path(out).parent / "shards"
    parts.mkdir(parents=True, exist_ok=True)
    resumed, counts, ties = 0, [], 0
    bar = tqdm(total=len(files), desc=f"score {scorer.kind}", disable=not progress,
               mininterval=5, file=sys.stderr)
    for i, (f, md) in enumerate(zip(files, metas)):
        part = parts / f"{i:05d}-{f.stem}.npz"
        if _shard_done(part, f, md.num_rows):
            resumed += 1
        else:
            w, l, caps, bw, bl = [], [], [], [], []

            def flush(n):
                imgs_w, imgs_l = np.concatenate(bw), np.concatenate(bl)
                w.append(scorer(imgs_w[:n], caps[:n], bs))
                l.append(scorer(imgs_l[:n], caps[:n], bs))
                rest = (imgs_w[n:], imgs_l[n:], caps[n:])
                bw[:], bl[:], caps[:] = [rest[0]], [rest[1]], rest[2]

            for unit in stream_pairs(cfg["pairs"], size=scorer.input_size, num_workers=nw,
                                     shards=[i]):
                if not unit["caption"]:
                    continue
                caps += unit["caption"]
                bw.append(unit["winner"])
                bl.append(unit["loser"])
                while len(caps) >= bs:
                    flush(bs)
            if caps:
                flush(len(caps))
            ws = np.concatenate(w) if w else np.zeros(0)
            ls = np.concatenate(l) if l else np.zeros(0)
            with write_atomic(part) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, winner=ws, loser=ls, n_rows=md.num_rows, n_kept=len(ws),
                         source_bytes=f.stat().st_size, source=str(f))
        with np.load(part) as z:
            counts.append(int(z["n_kept"]))
            ties += md.num_rows - int(z["n_kept"])
        bar.update(1)
    bar.close()
    ws, ls = [], []
    for i, f in enumerate(files):
        with np.load(parts / f"{i:05d}-{f.stem}.npz") as z:
            ws.append(z["winner"])
            ls.append(z["loser"])
    w, l = np.concatenate(ws), np.concatenate(ls)
    np.savez(out, winner=w, loser=l, shard_counts=np.asarray(counts),
             shards=np.asarray([f.name for f in files]))
    return {"n_pairs": int(len(w)), "n_ties_dropped": int(ties), "n_shards": len(files),
            "resumed_shards": resumed, "psi_agrees_with_label": float((w > l).mean()) if len(w) else None,
            "wall_s": round(time.time() - t0, 2)}
