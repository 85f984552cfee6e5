"""`mmablate bench` at smoke size on the CPU: each case runs the study's own training code
(the study's step function on `Harness.fit`; for mmalign the study's trl trainer) — spied on
here — and the CLI writes a result file the cost model reads. No assertion on speed."""
import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO

from mmablate.bench import cases as bench_cases
from mmablate.bench import run, sd15_unet_config
from mmablate.bench.timing import WARMUP_STEPS, StepClock

CONFIG = [str(REPO / "config/config.yaml"), str(REPO / "config/scales/paper.yaml")]
STEPS = 1


def _spy_step(monkeypatch, module, name, losses):
    """Wraps the study's ``make_step`` so that every loss its step returns is recorded."""
    real = getattr(module, name)

    def make_step(*a, **kw):
        step = real(*a, **kw)

        def spied(*sa, **skw):
            out = step(*sa, **skw)
            losses.append(float(out["loss"]))
            return out

        return spied

    monkeypatch.setattr(module, name, make_step)


def _check(r, case):
    assert r.case == case
    assert len(r.step_times) == STEPS and r.step_s > 0
    assert r.samples_s == pytest.approx(r.batch / r.step_s)
    assert r.flops and r.flops > 0  # FlopCounterMode over one whole step of the trainer


def test_rankclip_runs_the_study_step_on_the_harness(monkeypatch):
    from mmablate.studies.rankclip import train

    losses = []
    _spy_step(monkeypatch, train, "make_step", losses)
    dev, (r,) = run(["rankclip"], "smoke", steps=STEPS, config_files=CONFIG)
    _check(r, "rankclip")
    # two harness runs (λ from the paper config, then λ = 0), each warm-up + counted + timed
    assert len(losses) == 2 * (WARMUP_STEPS + STEPS)
    assert all(math.isfinite(v) for v in losses)
    assert "λ=0.0625" in r.model  # the paper config's rank_weight
    # open_clip_torch ships open_clip_train: its step is timed beside ours
    assert r.ref_step_s and r.reference.startswith("open_clip_train")


def test_pcclip_runs_the_study_step_on_the_harness(monkeypatch):
    from mmablate.studies.pcclip import finetune

    losses = []
    _spy_step(monkeypatch, finetune, "make_step", losses)
    _, (r,) = run(["pcclip"], "smoke", steps=STEPS, config_files=CONFIG)
    _check(r, "pcclip")
    assert len(losses) == WARMUP_STEPS + STEPS
    # the paper's contrastive loss at temperature 1 over a batch of 8: about log 8 at the start
    assert 0 < losses[0] < 2 * math.log(8)


def test_pairrank_runs_the_study_step_on_the_harness(monkeypatch):
    from mmablate.studies.pairrank import dpo

    losses = []
    _spy_step(monkeypatch, dpo, "make_step", losses)
    _, (r,) = run(["pairrank"], "smoke", steps=STEPS, config_files=CONFIG)
    _check(r, "pairrank")
    assert len(losses) == WARMUP_STEPS + STEPS
    # the study's LoRA starts with B = 0: policy = reference, so the first DPO loss is log 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[-1] != losses[0]  # the adapters trained


def test_mmalign_runs_the_study_trl_trainer(monkeypatch):
    from mmablate.studies.mmalign.trainer import BDHSMixedDPOTrainer

    calls = []
    real = BDHSMixedDPOTrainer.compute_loss

    def compute_loss(self, *a, **kw):
        calls.append(self.args.gamma)
        return real(self, *a, **kw)

    monkeypatch.setattr(BDHSMixedDPOTrainer, "compute_loss", compute_loss)
    _, (r,) = run(["mmalign"], "smoke", steps=STEPS, config_files=CONFIG)
    _check(r, "mmalign")
    # one micro-batch per optimizer step, γ from the paper config's bdhs block
    assert calls == [0.5] * (WARMUP_STEPS + STEPS)
    assert "LoRA r128" in r.model


def test_cli_writes_a_result_the_cost_model_reads(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_gpu.py"), "--size", "smoke",
                        "--steps", "1", "--cases", "pcclip", "--config", *CONFIG,
                        "--json", str(out)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| pcclip" in p.stdout and "studies.pcclip.finetune.make_step" in p.stdout
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and res["size"] == "smoke"
    (r,) = res["results"]
    assert {"case", "flops", "step_s"} <= set(r) and r["flops"] > 0


def test_unknown_case_and_missing_study_are_named(tmp_path):
    from mmablate.errors import ConfigError

    with pytest.raises(ValueError, match="unknown bench case 'clip'"):
        run(["clip"], "smoke", config_files=CONFIG)
    c = tmp_path / "c.yaml"
    c.write_text("studies: {rankclip: {}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: studies\.pcclip: missing"):
        run(["pcclip"], "smoke", config_files=[str(c)])


def test_clock_times_steps_after_the_counted_one():
    import torch

    clock = StepClock(torch.device("cpu"))
    for s in range(WARMUP_STEPS + 3):
        if s == 1:
            torch.ones(4, 4) @ torch.ones(4, 4)  # inside the counter: 2·4·4·4 FLOPs
        clock.after_step(s)
    assert len(clock.times) == 3 and clock.flops == 2 * 4 * 4 * 4


def test_sd15_unet_config_is_sd15():
    cfg = sd15_unet_config(64, smoke=False)
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280)
    assert cfg["cross_attention_dim"] == 768 and cfg["sample_size"] == 64
    assert bench_cases.SD15_SCHEDULER["beta_schedule"] == "scaled_linear"
