"""Text-to-image diffusion models: the world's tiny pixel-space UNet and Stable Diffusion.

Both are diffusers ``UNet2DConditionModel`` noise predictors behind one interface (`T2I`):

* ``kind: world`` — a pixel-space UNet (16 px) conditioned on the token states of the world's
  tiny open_clip text tower (the rankclip stage's CLIP, frozen), pretrained here by
  `pretrain` and saved as a pipeline-style directory (``unet/``, ``scheduler/``, ``t2i.json``);
* ``kind: sd`` — a Stable Diffusion pipeline directory or hub id (``unet``, ``vae``,
  ``text_encoder``, ``tokenizer``, ``scheduler`` subfolders, as ``save_pretrained`` writes them):
  latent-space diffusion, CLIP text encoder states (paper scale: runwayml/stable-diffusion-v1-5).

Sampling is DDIM with classifier-free guidance (the unconditional branch is the empty prompt).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, ConfigError
from ...training import checkpoint


def world_text_states(clip, tokens):
    """Per-token states of an open_clip text tower (what CLIP.encode_text computes before pooling)."""
    x = clip.token_embedding(tokens)
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)


class T2I:
    """A text-to-image diffusion model: unet + text encoder (+ VAE for latent models)."""

    def __init__(self, unet, scheduler_config, encode_text, vae=None, image_size=16,
                 device="cpu"):
        self.unet, self.vae, self.encode_text_fn = unet, vae, encode_text
        self.scheduler_config = dict(scheduler_config)
        self.image_size, self.device = image_size, device
        self._cache: dict[str, object] = {}

    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def text_states(self, prompts):
        """Encoder states per prompt (frozen encoder; cached per prompt)."""
        import torch

        new = sorted({p for p in prompts if p not in self._cache})
        if new:
            with torch.no_grad():
                states = self.encode_text_fn(new)
            for p, s in zip(new, states):
                self._cache[p] = s
        return torch.stack([self._cache[p] for p in prompts]).to(self.device)

    def to_latent(self, images):
        """uint8 [N, H, W, 3] → model space (pixels in [-1, 1], or VAE latents)."""
        import torch

        x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        x = x.to(self.device)
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def to_images(self, z) -> np.ndarray:
        import torch

        with torch.no_grad():
            if self.vae is not None:
                z = self.vae.decode(z / self.vae.config.scaling_factor).sample
            x = ((z.clamp(-1, 1) + 1) * 127.5).round().byte()
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def latent_shape(self, n):
        c = self.unet.config.in_channels
        s = self.unet.config.sample_size
        return (n, c, s, s)

    def sample(self, prompts, seed: int, steps: int = 20, guidance: float = 3.0,
               batch: int = 64) -> np.ndarray:
        """DDIM samples with classifier-free guidance; uint8 [N, H, W, 3]."""
        import torch
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        out = []
        self.unet.eval()
        for i in range(0, len(prompts), batch):
            ps = list(prompts[i:i + batch])
            cond = self.text_states(ps)
            uncond = self.text_states([""] * len(ps))
            z = torch.randn(self.latent_shape(len(ps)), generator=g).to(self.device)
            with torch.no_grad():
                for t in sched.timesteps:
                    eps = self.unet(torch.cat([z, z]), t, torch.cat([uncond, cond])).sample
                    eu, ec = eps.chunk(2)
                    z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
            out.append(self.to_images(z))
        return np.concatenate(out)


# ---- loading -------------------------------------------------------------------------------
def _world_text_encoder(clip_cfg: dict, device):
    from ...models import clip as clipm

    model, _, tok = clipm.build(clip_cfg["model"])
    clipm.load_weights(model, clip_cfg["weights"])
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)

    def encode(prompts):
        return world_text_states(model, tok(list(prompts)).to(device)).float()

    return encode


def load_t2i(mcfg: dict, device: str = "cpu") -> T2I:
    """The model of a stage's ``model`` block (see module docstring)."""
    from diffusers import UNet2DConditionModel

    kind = mcfg.get("kind")
    if kind == "world":
        d = Path(mcfg["dir"])
        meta_p = d / "t2i.json"
        if not meta_p.is_file():
            raise CheckpointError(f"{d}: not a world text-to-image directory (no t2i.json)")
        meta = json.loads(meta_p.read_text())
        try:
            unet = UNet2DConditionModel.from_pretrained(d / "unet")
        except Exception as e:
            raise CheckpointError(f"{d / 'unet'}: cannot load the UNet ({e})") from None
        sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
        enc = _world_text_encoder(meta["text_encoder"], device)
        return T2I(unet.to(device), sched, enc, None, unet.config.sample_size, device)
    if kind == "sd":
        from diffusers import AutoencoderKL, DDPMScheduler
        from transformers import CLIPTextModel, CLIPTokenizer

        src = mcfg["pretrained"]
        if Path(src).exists() and not (Path(src) / "model_index.json").is_file():
            raise CheckpointError(f"{src}: not a diffusers pipeline directory (no model_index.json)")
        try:
            unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
            te = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
            tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
            sched = DDPMScheduler.from_pretrained(src, subfolder="scheduler").config
        except OSError as e:
            raise CheckpointError(f"{src}: cannot load the Stable Diffusion pipeline ({e})") from None
        te.eval().to(device).requires_grad_(False)
        vae.eval().to(device).requires_grad_(False)

        def encode(prompts):
            ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids.to(device)
            return te(ids).last_hidden_state.float()

        size = unet.config.sample_size * (2 ** (len(vae.config.block_out_channels) - 1))
        return T2I(unet.to(device), sched, encode, vae, size, device)
    raise ConfigError(f"model.kind {kind!r}: expected 'world' or 'sd'")


# ---- pretraining the world model -----------------------------------------------------------
def pretrain(cfg: dict, out_dir, threads: int = 1, stop_after: int | None = None,
             progress: bool = True) -> dict:
    """Trains the world's pixel-space UNet on the pretraining parquet (DDPM ε-prediction)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from tqdm import tqdm

    from ...data.pickapic import decode, read_table
    from ...training.schedule import make_scheduler, set_threads

    set_threads(threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    seed = cfg["seed"]
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tc = cfg["train"]
    df = read_table(cfg["data"], required=("caption", "jpg"))
    if tc.get("max_samples"):
        df = df.iloc[:tc["max_samples"]]
    images = np.stack([decode(b, f"{cfg['data']}: row {k} (jpg)") for k, b in enumerate(df["jpg"])])
    if images.shape[1] != cfg["unet"]["sample_size"]:
        raise ConfigError(f"unet.sample_size {cfg['unet']['sample_size']} differs from the "
                          f"{images.shape[1]} px images of {cfg['data']}")
    captions = df["caption"].astype(str).tolist()
    unet = UNet2DConditionModel(**cfg["unet"]).to(device)
    sched_cfg = DDPMScheduler(**cfg["scheduler"]).config
    t2i = T2I(unet, sched_cfg, _world_text_encoder(cfg["text_encoder"], device), None,
              cfg["unet"]["sample_size"], device)
    noise_sched = t2i.noise_scheduler()
    x_all = t2i.to_latent(images)
    opt = torch.optim.AdamW(unet.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    lr_sched = make_scheduler(opt, tc["warmup"], tc["steps"])
    g = torch.Generator().manual_seed(seed)  # the data order; its state is checkpointed
    ckpt = checkpoint.Resumable(ckpt_dir, {"model": unet, "optimizer": opt, "scheduler": lr_sched,
                                           "generator": (g.get_state, g.set_state)},
                                every=tc["ckpt_every"], total=tc["steps"], stop_after=stop_after)
    start, log_rows = ckpt.resume()
    unet.train()
    bf16 = device == "cuda"
    bar = tqdm(range(start, tc["steps"]), desc="pretrain unet", disable=not progress,
               mininterval=5, file=sys.stderr, initial=start, total=tc["steps"])
    for step in bar:
        idx = torch.randint(0, len(captions), (tc["batch_size"],), generator=g)
        x0 = x_all[idx]
        ps = [captions[i] if torch.rand(1).item() >= tc["cfg_dropout"] else "" for i in idx.tolist()]
        cond = t2i.text_states(ps)
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), device=device)
        xt = noise_sched.add_noise(x0, noise, t)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(xt, t, cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if step % tc.get("log_every", 10) == 0 or step == tc["steps"] - 1:
            log_rows.append({"step": step, "loss": loss.item(), "lr": lr_sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if ckpt.step_done(step + 1, log_rows):
            return {"stopped_at": step + 1}
    unet.save_pretrained(out_dir / "unet")
    noise_sched.save_pretrained(out_dir / "scheduler")
    write_log(out_dir / "train_log.csv", log_rows)
    (out_dir / "t2i.json").write_text(json.dumps({"kind": "world",
                                                  "text_encoder": cfg["text_encoder"]}, indent=1))
    summary = {"steps": tc["steps"], "resumed_from": start, "final_loss": log_rows[-1]["loss"],
               "params": sum(p.numel() for p in unet.parameters()),
               "wall_s": round(time.time() - t0, 2), "device": device}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_log(path, rows):
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
