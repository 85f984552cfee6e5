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
import time
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, ConfigError


def world_text_states(clip, tokens):
    """Per-token states of an open_clip text tower (what CLIP.encode_text computes before pooling)."""
    x = clip.token_embedding(tokens)
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)


def to_pixels(images):
    """uint8 [N, H, W, 3] → float [N, 3, H, W] in [-1, 1] (on the CPU)."""
    import torch

    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


class T2I:
    """A text-to-image diffusion model: unet + text encoder (+ VAE for latent models)."""

    CACHE_PROMPTS = 4096  # text states kept (on the device); a paper-scale selection has ~45k
    # distinct prompts (77×768 floats each), so the cache is emptied when full

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
        if new and len(self._cache) + len(new) > self.CACHE_PROMPTS:
            self._cache = {p: s for p, s in self._cache.items() if p in prompts}
        if new:
            with torch.no_grad():
                states = self.encode_text_fn(new)
            for p, s in zip(new, states):
                self._cache[p] = s
        return torch.stack([self._cache[p] for p in prompts]).to(self.device)

    def to_latent(self, images, generator=None):
        """uint8 [N, H, W, 3] → model space (pixels in [-1, 1], or VAE latents: a sample of the
        VAE's posterior, drawn from `generator` if given, else torch's global RNG)."""
        import torch

        x = to_pixels(images).to(self.device)
        if self.vae is None:
            return x
        with torch.no_grad():
            z = self.vae.encode(x).latent_dist.sample(generator=generator)
            return z.float() * self.vae.config.scaling_factor

    def to_images(self, z) -> np.ndarray:
        import torch

        with torch.no_grad():
            if self.vae is not None:
                z = self.vae.decode(z / self.vae.config.scaling_factor).sample
            x = ((z.float().clamp(-1, 1) + 1) * 127.5).round().byte()
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def latent_shape(self, n):
        c = self.unet.config.in_channels
        s = self.unet.config.sample_size
        return (n, c, s, s)

    def sample(self, prompts, seed: int, steps: int = 20, guidance: float = 3.0,
               batch: int = 64, precision: str = "fp32") -> np.ndarray:
        """DDIM samples with classifier-free guidance, `batch` prompts at a time; uint8
        [N, H, W, 3]. The initial noise comes from one CPU generator seeded `seed` (the same
        numbers on every device); on CUDA the UNet and the VAE decoder run under autocast in
        ``precision`` (fp16 / bf16; fp32: none), the CPU stays fp32."""
        import contextlib

        import torch
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        cuda = str(self.device).startswith("cuda")
        amp = (torch.autocast("cuda", dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
               if cuda and precision in ("fp16", "bf16") else contextlib.nullcontext())
        out = []
        self.unet.eval()
        for i in range(0, len(prompts), batch):
            ps = list(prompts[i:i + batch])
            cond = self.text_states(ps)
            uncond = self.text_states([""] * len(ps))
            z = torch.randn(self.latent_shape(len(ps)), generator=g).to(self.device)
            with torch.no_grad(), amp:
                for t in sched.timesteps:
                    eps = self.unet(torch.cat([z, z]), t, torch.cat([uncond, cond])).sample
                    eu, ec = eps.float().chunk(2)
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


# ---- per-step draws on the training harness ---------------------------------------------
class StepDraws:
    """The random draws of each optimizer step, made for the whole effective batch at once.

    The harness asks ``order(step)`` for a step's dataset indices (in the main process, as its
    DataLoader fetches the step's first micro-batch); here ``draw(step)`` also makes that step's
    other per-sample draws (noise, timesteps, …) right there, in the order the hand-written loop
    made them, and the study's step function takes its micro-batch's slice with `take()`. So

    * at one process without accumulation the draws are the hand-written loop's, number for number;
    * k micro-batches of B/k see the per-sample draws of one batch of B (micro-batch j of rank r
      holds positions ``j·batch_size + r·batch_size/world …``, as the harness's sampler);
    * a checkpoint stores the generators as they were right after the last finished step's draws
      (``state()``), and a resumed run restores them before its first draw (`set_state` defers
      to the next ``order`` call, after the harness has restored torch's global RNG), so the
      run continues the uninterrupted run's random stream even when the loader prefetches.

    ``draw(step) -> (indices [E], {name: tensor [E, ...]})``; ``generator``: the dedicated
    generator the draws use (``global_rng``: whether they also use torch's global RNG).
    """

    def __init__(self, draw, generator, *, batch_size: int, micro_batch: int, accum: int,
                 rank: int = 0, global_rng: bool = False):
        self.draw, self.g, self.global_rng = draw, generator, global_rng
        self.bs, self.per_rank, self.accum, self.rank = batch_size, micro_batch, accum, rank
        self._extras, self._snap, self._pending = {}, {}, None
        self._used = {}  # step → micro-batches taken
        self.done = None

    def order(self, step: int):
        import torch

        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        idx, extras = self.draw(step)
        self._extras[step] = extras
        snap = {"generator": self.g.get_state()}
        if self.global_rng:
            snap["rng"] = torch.get_rng_state()
        self._snap[step] = snap
        return idx

    def take(self) -> dict:
        """This micro-batch's slice of its step's draws (steps are taken in order)."""
        step = min(self._extras)
        j = self._used.get(step, 0)
        lo = j * self.bs + self.rank * self.per_rank
        out = {k: v[lo:lo + self.per_rank] for k, v in self._extras[step].items()}
        if j + 1 == self.accum:
            del self._extras[step]
            self._used.pop(step, None)
        else:
            self._used[step] = j + 1
        return out

    def step_finished(self, step: int):
        """The harness's ``after_step``: the state a checkpoint after ``step`` must hold."""
        self.done = step
        for s in [s for s in self._snap if s < step]:
            del self._snap[s]

    def state(self) -> dict:
        if self.done is None:
            raise RuntimeError("StepDraws.state before the first finished step")
        return dict(self._snap[self.done])

    def set_state(self, state: dict):
        self._pending = dict(state)

    def _restore(self, state):
        import torch

        self.g.set_state(state["generator"])
        if self.global_rng and "rng" in state:
            torch.set_rng_state(state["rng"])

    @property
    def part(self):
        """The (get, set) pair for the harness's ``extra_state``."""
        return (self.state, self.set_state)


# ---- pretraining the world model -----------------------------------------------------------
def pretrain(cfg: dict, out_dir, threads: int = 1, stop_after: int | None = None,
             progress: bool = True) -> dict:
    """Trains the world's pixel-space UNet on the pretraining parquet (DDPM ε-prediction), on
    the training harness (``model.train``: ``effective_batch``, ``bf16``, ``grad_checkpointing``,
    ``max_grad_norm`` (default none, as before), ``num_workers``).

    Per step, the batch indices come from a generator seeded ``seed`` (its state checkpointed);
    the classifier-free-guidance dropout, the noise and the timesteps come from torch's global RNG
    (seeded ``seed`` before the UNet's initialisation), in this order, for the whole effective
    batch (`StepDraws`). They are drawn on the CPU and moved to the device (the hand-written loop
    drew the noise and timesteps on the device, so CUDA runs draw other numbers than before; the
    CPU's are unchanged)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from ...data.pickapic import decode, read_table
    from ...training.harness import Harness, Tensors
    from ...training.schedule import make_scheduler

    t0 = time.time()
    out_dir = Path(out_dir)
    seed = cfg["seed"]
    tc = cfg["train"]
    h = Harness(tc, seed=seed, out_dir=out_dir, where="studies.pairrank.model.train",
                threads=threads, stop_after=stop_after, progress=progress)
    torch.manual_seed(seed)
    device = h.device.type
    df = read_table(cfg["data"], required=("caption", "jpg"))
    if tc.get("max_samples"):
        df = df.iloc[:tc["max_samples"]]
    images = np.stack([decode(b, f"{cfg['data']}: row {k} (jpg)") for k, b in enumerate(df["jpg"])])
    if images.shape[1] != cfg["unet"]["sample_size"]:
        raise ConfigError(f"unet.sample_size {cfg['unet']['sample_size']} differs from the "
                          f"{images.shape[1]} px images of {cfg['data']}")
    captions = df["caption"].astype(str).tolist()
    unet = UNet2DConditionModel(**cfg["unet"])
    sched_cfg = DDPMScheduler(**cfg["scheduler"]).config
    t2i = T2I(unet, sched_cfg, _world_text_encoder(cfg["text_encoder"], h.device), None,
              cfg["unet"]["sample_size"], h.device)
    noise_sched = t2i.noise_scheduler()
    x_all = to_pixels(images)  # the model space of the pixel UNet, kept on the CPU
    g = torch.Generator().manual_seed(seed)  # the data order; its state is checkpointed
    n_t = noise_sched.config.num_train_timesteps

    def draw(step):
        eff = h.settings["effective_batch"]
        idx = torch.randint(0, len(captions), (eff,), generator=g)
        keep = torch.tensor([torch.rand(1).item() >= tc["cfg_dropout"] for _ in range(eff)])
        # randn_like of the batch (as the hand-written loop): the pixels' channels-last strides
        # fix the order in which the noise fills them
        noise = torch.randn_like(x_all[idx])
        t = torch.randint(0, n_t, (eff,))
        return idx, {"keep": keep, "noise": noise, "t": t}

    draws = StepDraws(draw, g, batch_size=tc["batch_size"], micro_batch=h.micro_batch,
                      accum=h.accum, rank=h.rank, global_rng=True)
    h.setup(unet, lambda m: torch.optim.AdamW(m.parameters(), lr=tc["lr"],
                                              weight_decay=tc["weight_decay"]),
            lambda opt: make_scheduler(opt, tc["warmup"], tc["steps"]),
            extra_state={"generator": draws.part})

    def step(batch):
        x0, ids = batch
        d = draws.take()
        ps = [captions[i] if k else "" for i, k in zip(ids.tolist(), d["keep"].tolist())]
        cond = t2i.text_states(ps)
        noise, t = d["noise"].to(h.device), d["t"].to(h.device)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = h.model(xt, t, cond).sample
        return {"loss": torch.nn.functional.mse_loss(pred.float(), noise)}

    result = h.fit(step, Tensors(x_all, torch.arange(len(captions))), steps=tc["steps"],
                   ckpt_every=tc["ckpt_every"], log_every=tc.get("log_every", 10),
                   order=draws.order, after_step=draws.step_finished, desc="pretrain unet")
    if "stopped_at" in result:
        return result
    summary = {"steps": tc["steps"], "resumed_from": result["resumed_from"],
               "final_loss": result["final_loss"],
               "params": sum(p.numel() for p in unet.parameters()),
               "wall_s": round(time.time() - t0, 2), "device": device,
               "world_size": h.world_size, "effective_batch": h.settings["effective_batch"]}
    if h.is_main:
        unet.save_pretrained(out_dir / "unet")
        noise_sched.save_pretrained(out_dir / "scheduler")
        (out_dir / "t2i.json").write_text(json.dumps({"kind": "world",
                                                      "text_encoder": cfg["text_encoder"]}, indent=1))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    h.barrier()
    return summary


def write_log(path, rows):
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
