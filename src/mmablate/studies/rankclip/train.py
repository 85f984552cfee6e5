"""CLIP pretraining from scratch with the RankCLIP objective (also the plain CLIP base, λ = 0).

Runs on the training harness (`mmablate.training.harness`): one process or N ranks
(`mmablate launch --nproc N`), bf16 on CUDA, gradient accumulation to ``train.effective_batch``.

* Across ranks the image and text features are gathered WITH gradients (open_clip's
  ``gather_features(gather_with_grad=True)``) before the CLIP and the ranking losses, so both losses
  are over the whole global batch and N ranks train as one process on the same batch does.
* Accumulation (``effective_batch`` = k × ``batch_size``) is open_clip_train's ``accum_freq``:
  the features of all k micro-batches are computed once without gradients, then each micro-batch
  is recomputed with gradients and the loss over the whole effective batch is back-propagated
  through its features, so k micro-batches give the gradient of one batch of k × batch_size.
* Deterministic given (stage config, seed) on the CPU: the data order of every step is derived
  from the seed and the epoch, so a run killed and resumed from its last checkpoint reaches the
  same weights as an uninterrupted one.

AdamW betas come from ``train.betas`` (default 0.9/0.98), eps 1e-6 (open_clip_train's defaults
for ViT; the authors' CyCLIP-based code uses 0.9/0.999 and 1e-8).
"""
from __future__ import annotations

from pathlib import Path

from ...training.harness import Harness, Tensors
from ...training.schedule import make_scheduler, param_groups


class _ImageText:
    """Items (image, tokens) of an ImageTextCsv; preloaded images are indexed per batch."""

    def __init__(self, data, tokens):
        self.data, self.tokens = data, tokens

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.image(i), self.tokens[i]


def train(cfg: dict, seed: int, world_dir, out, threads: int = 1, stop_after: int | None = None,
          progress: bool = True) -> dict:
    import torch

    from ...data.imagetext import ImageTextCsv
    from ...errors import ConfigError
    from ...models import clip as clipm
    from .losses import RankCLIPLoss

    out = Path(out)
    tc = cfg["train"]
    h = Harness(tc, seed=seed, out_dir=out.parent, where="train", threads=threads,
                stop_after=stop_after, progress=progress)
    torch.manual_seed(seed)
    model, preprocess, tok = clipm.build(cfg["model"])
    data = ImageTextCsv(Path(world_dir) / cfg["data"]["train_csv"], preprocess,
                        limit=tc.get("max_samples"))
    texts = tok(data.captions)
    eff = h.settings["effective_batch"]
    if eff > len(data):
        key = "effective_batch" if tc.get("effective_batch") else "batch_size"
        raise ConfigError(f"train.{key} {eff} exceeds the {len(data)} samples")
    loss_fn = RankCLIPLoss(cfg["loss"]["rank_weight"], cfg["loss"]["decay"])
    cuda = h.device.type == "cuda"
    h.setup(model,
            # fused AdamW is one kernel per step on CUDA (the CPU keeps the reference one)
            lambda m: torch.optim.AdamW(param_groups(m, tc["weight_decay"]), lr=tc["lr"],
                                        betas=tuple(tc.get("betas", (0.9, 0.98))), eps=1e-6,
                                        **({"fused": True} if cuda else {})),
            lambda opt: make_scheduler(opt, tc["warmup"], tc["steps"]))
    dataset = Tensors(data.images, texts) if data.images is not None else _ImageText(data, texts)

    def features(images, tokens):
        o = h.model(images, tokens)
        # the losses in fp32 (autocast covers the towers), over the whole batch of all ranks
        return (h.gather(o["image_features"].float()), h.gather(o["text_features"].float()),
                o["logit_scale"].float())

    def step(micro, backward):
        if len(micro) == 1:
            img, txt, scale = features(*micro[0])
            losses = loss_fn(img, txt, scale)
            backward(losses["loss"])
            return losses
        with torch.no_grad():  # open_clip_train's accum_freq: cache every micro-batch's features
            cache = [features(*b)[:2] for b in micro]
        for j, b in enumerate(micro):
            img, txt, scale = features(*b)
            imgs = torch.cat([c[0] for c in cache[:j]] + [img] + [c[0] for c in cache[j + 1:]])
            txts = torch.cat([c[1] for c in cache[:j]] + [txt] + [c[1] for c in cache[j + 1:]])
            losses = loss_fn(imgs, txts, scale)
            backward(losses["loss"])
        return losses

    def clamp(_step):
        with torch.no_grad():  # clamp the temperature as CLIP does (logit scale ≤ 100)
            h.unwrapped.logit_scale.clamp_(0, 4.6052)

    result = h.fit(step, dataset, steps=tc["steps"], ckpt_every=tc["ckpt_every"],
                   log_every=tc.get("log_every", 10), group=True, after_step=clamp,
                   desc=f"train seed {seed}")
    if "stopped_at" in result:
        return result
    h.save_final(h.unwrapped.state_dict(), out)
    return result
