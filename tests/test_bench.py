"""`python -m mmablate bench` at smoke size on the CPU: every case runs and the table is sane."""
import json
import subprocess
import sys

import pytest

from .conftest import REPO

from mmablate.bench import diffusion_dpo_loss, sd15_unet_config


@pytest.mark.slow
def test_bench_smoke_prints_a_table(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_gpu.py"), "--size", "smoke",
                        "--steps", "1", "--json", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for case in ("rankclip", "pcclip", "pairrank", "mmalign"):
        assert f"| {case}" in p.stdout
    res = json.loads(out.read_text())
    assert res["device"] == "cpu"
    for r in res["results"]:
        assert r["step_s"] > 0 and r["samples_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert r["flops"] and r["flops"] > 0  # counted by torch's FlopCounterMode
    rc = next(r for r in res["results"] if r["case"] == "rankclip")
    # open_clip_torch ships open_clip_train: its step is timed beside ours
    assert rc["ref_step_s"] and rc["reference"].startswith("open_clip_train")


def test_sd15_unet_config_is_sd15():
    cfg = sd15_unet_config(64, smoke=False)
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280)
    assert cfg["cross_attention_dim"] == 768 and cfg["sample_size"] == 64


def test_diffusion_dpo_loss_is_log2_with_zero_lora():
    """With LoRA B = 0 the policy equals the reference, so the loss is exactly log 2."""
    import math

    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config(8, smoke=True))
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"]))
    x = torch.randn(4, 4, 8, 8)
    t = torch.tensor([10, 500, 10, 500])
    cond = torch.randn(4, 77, 32)
    loss = diffusion_dpo_loss(unet, x, t, cond, torch.randn_like(x), beta=5000.0)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert any(p.grad is not None for n, p in unet.named_parameters() if "lora" in n)
