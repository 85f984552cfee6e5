"""`python -m mmablate bench`: time training steps of each study's trainer at paper shapes.

Every case runs the study's own training code for a few optimizer steps — the step function
its training stage uses, on `mmablate.training.harness.Harness.fit`, or for mmalign the study's
trl trainer (`BDHSMixedDPOTrainer`, a `trl.DPOTrainer`) — on synthetic inputs at the real
resolution, with random weights (models are built from their configs; nothing is downloaded).
The loss, optimizer and trainer settings come from the paper scale's config blocks
(``--config``, default ``config/config.yaml`` + ``config/scales/paper.yaml``). Per case it
prints the median step time, samples/s, the model FLOPs of one step (counted by
`torch.utils.flop_counter.FlopCounterMode`: matmuls, convolutions, attention) and, where the
device's peak is known, model FLOPs utilisation (MFU). The cases (`cases`):

* ``rankclip`` — `studies.rankclip.train.make_step` (RankCLIP loss, λ from the config) on the
  paper's open_clip architecture at 224 px; beside it the same model at λ = 0 and, when
  ``open_clip_train`` is importable, its ``train_one_epoch`` on the same batch (the ratio is
  printed).
* ``pcclip`` — `studies.pcclip.finetune.make_step`: the text transformer finetuned on cached
  image embeddings, the paper's combine / loss / optimizer / batch.
* ``pairrank`` — `studies.pairrank.dpo.make_step`: Diffusion-DPO with the study's LoRA on SD-1.5's
  UNet (built from its config) at 64×64 latents.
* ``mmalign`` — `studies.mmalign.trainer.BDHSMixedDPOTrainer.train`: BDHS-DPO (γ, β, LoRA from
  the config) on a LLaVA-7B-shaped model (depth ``--llm-layers``), offline pairs.

This package is a client of the studies and the harness; nothing in the pipeline imports it.
Results and how to reproduce them: benchmarks/README.md.
"""
from __future__ import annotations

import json

from .cases import CASES, SIZES, sd15_unet_config  # noqa: F401 (the cost model's UNet shape)
from .timing import PEAK_BF16_TFLOPS, Result, peak_tflops, table  # noqa: F401

DEFAULT_CONFIG = ["config/config.yaml", "config/scales/paper.yaml"]


def add_arguments(p):
    p.add_argument("--size", choices=["smoke", "paper"], default="paper",
                   help="paper: the real shapes (a GPU); smoke: tiny dims that run on a CPU")
    p.add_argument("--cases", default="rankclip,pcclip,pairrank,mmalign",
                   help="comma-separated cases (default: all four)")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps (after a warm-up step and a FLOP-counted step)")
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--llm-layers", type=int, default=None,
                   help="mmalign: language-model depth (LLaVA-7B has 32)")
    p.add_argument("--config", nargs="+", default=DEFAULT_CONFIG,
                   help="config files whose studies.<id> blocks give the losses and trainer "
                        "settings (default: the paper scale)")
    p.add_argument("--no-bf16", action="store_true", help="fp32 even on CUDA")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")


def run(cases, size="paper", steps=5, batch=None, llm_layers=None, bf16=True, threads=1,
        config_files=DEFAULT_CONFIG):
    """(device, [Result]) of the named cases. The device is the trainers' own choice: CUDA when
    present (the harness's accelerate and trl's Trainer), else the CPU."""
    import torch

    from .. import config as C
    from ..errors import ConfigError

    if steps < 1:
        raise ValueError(f"bench: --steps {steps}: at least 1 timed step")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown bench case {unknown[0]!r}; known: {sorted(CASES)}")
    cfg = C.load(config_files)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = size == "smoke"
    results = []
    for c in cases:
        study = (cfg.get("studies") or {}).get(c)
        if not isinstance(study, dict):
            raise ConfigError(f"{' + '.join(map(str, config_files))}: studies.{c}: missing "
                              f"(the bench reads the study's training blocks from it)")
        sz = dict(SIZES[c][size])
        if batch:
            sz["batch"] = batch
        if llm_layers and c == "mmalign":
            sz["llm_layers"] = llm_layers
        torch.manual_seed(0)
        results.append(CASES[c](study, sz, steps, bf16, threads, smoke))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return dev, results


def main(a):
    import platform

    import torch

    from ..training.schedule import set_threads

    set_threads(a.threads)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    dev, results = run(cases, a.size, a.steps, a.batch, a.llm_layers, not a.no_bf16, a.threads,
                       a.config)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {dev} ({name}); size {a.size}; bf16 autocast "
          f"{'on' if dev.type == 'cuda' and not a.no_bf16 else 'off'}; median of {a.steps} steps")
    if peak_tflops(dev) is None:
        print("MFU: n/a (no known peak for this device; set MMABLATE_PEAK_TFLOPS)")
    print(table(dev, results))
    for r in results:
        print(f"{r.case}: {r.path}")
    if a.json:
        from pathlib import Path

        Path(a.json).write_text(json.dumps(
            {"device": str(dev), "device_name": name, "size": a.size, "steps": a.steps,
             "results": [{**r.__dict__, "samples_s": r.samples_s} for r in results]}, indent=1))
    return results
