"""`mmablate cost`: FLOP counts against closed forms, the DAG's jobs per rule against
snakemake's, the profile comparison, bench files, and the smoke / tiny / paper configs."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmablate.config import load
from mmablate.cost import models as M

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_disk_cache():
    M.use_cache(None)
    yield


# ---- closed forms ------------------------------------------------------------------------------
def test_linear_stack_closed_form():
    """2 linear layers 8→16→4 at batch 3: forward 2·B·Σ in·out; backward: every weight's
    gradient (2·B·in·out each) and the second layer's input gradient (the first's input needs none)."""
    B, fwd = 3, 2 * 3 * (8 * 16 + 16 * 4)
    assert M.linear_stack_flops([8, 16, 4], B) == fwd
    assert M.linear_stack_flops([8, 16, 4], B, train=True) == fwd + fwd + 2 * B * 16 * 4


def _llama_forward(d, f, V, T, L):
    """q, k, v, o (d×d), gate/up/down (d×f), QKᵀ and AV (2·T²·d each), the LM head (d×V)."""
    return L * (4 * 2 * T * d * d + 3 * 2 * T * d * f + 4 * T * T * d) + 2 * T * d * V


def test_transformer_closed_form_and_depth():
    """A 2-layer Llama (the family of mmalign's LM and the captioners) against its closed form;
    the depth extrapolation (`by_depth`) equals a full count of a 5-layer one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def count(L, T=16, d=64, f=128, V=100):
        with torch.device("meta"):
            m = LlamaForCausalLM(LlamaConfig(hidden_size=d, intermediate_size=f,
                                             num_hidden_layers=L, num_attention_heads=4,
                                             num_key_value_heads=4, vocab_size=V))
        m.config.pad_token_id = None
        ids = torch.zeros(1, T, dtype=torch.long, device="meta")
        with torch.no_grad():
            return M.count(lambda: m(input_ids=ids))

    assert count(2) == _llama_forward(64, 128, 100, 16, 2)
    assert M.by_depth(count, 5) == count(5) == _llama_forward(64, 128, 100, 16, 5)


def test_rankclip_world_clip_closed_form():
    """RankCLIP's (and PC-CLIP's tiny) world CLIP: a ViT tower (32 px, patch 8 → 17 tokens, width
    64, 2 layers, MLP ×4) and a text tower (20 tokens), each with its projection to 64."""
    mb = load(["config/config.yaml"])["studies"]["rankclip"]["model"]
    w, E, L = 64, 64, 2

    def block(n):
        return 2 * n * w * 3 * w + 2 * n * w * w + 4 * n * n * w + 2 * (2 * n * w * 4 * w)
    patch = 2 * 16 * (3 * 8 * 8) * w
    assert M.clip_flops(mb, "image") == patch + L * block(17) + 2 * w * E
    assert M.clip_flops(mb, "text") == L * block(20) + 2 * w * E
    # training: backward counted too (every weight trained: more than 2× the forward)
    assert M.clip_flops(mb, "image", "all") > 2 * M.clip_flops(mb, "image")


def test_pcclip_tiny_captioner_closed_form():
    """PC-CLIP's tiny Llama captioner as its own `build_model` makes it (MLP 2·hidden, tied
    embeddings) against the closed form; encoder–decoder and masked families count too."""
    spec = load(["config/config.yaml"])["studies"]["pcclip"]["captions"]["captioners"]
    s = spec["llama2_chat"]["size"]
    T = 24
    assert M.lm_flops(None, "llama", s, T) == _llama_forward(s["hidden"], 2 * s["hidden"],
                                                            M.TINY_VOCAB, T, s["layers"])
    assert M.lm_flops(None, "t5", spec["t5"]["size"], T, 8) > 0
    assert M.lm_flops(None, "bert", spec["bert"]["size"], T) > 0


def test_pairrank_unet_block_closed_form():
    """A block of the pair-ranking UNet (diffusers' ResnetBlock2D, 32→64 channels at 8×8, time
    embedding 128): two 3×3 convolutions, the time projection and the 1×1 shortcut."""
    import torch
    from diffusers.models.resnet import ResnetBlock2D

    with torch.device("meta"):
        rb = ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=128, groups=8)
    x, te = torch.zeros(1, 32, 8, 8, device="meta"), torch.zeros(1, 128, device="meta")
    hw = 8 * 8
    want = 2 * hw * 32 * 64 * 9 + 2 * 128 * 64 + 2 * hw * 64 * 64 * 9 + 2 * hw * 32 * 64
    with torch.no_grad():
        assert M.count(lambda: rb(x, te)) == want
    # the tiny world UNet: LoRA training costs more than a forward and less than 4×
    u = load(["config/config.yaml"])["studies"]["pairrank"]["model"]["unet"]
    fwd, tr = M.unet_flops(u, "forward"), M.unet_flops(u, "train", 8)
    assert fwd < tr < 4 * fwd


def test_mmalign_tiny_llava_decomposition():
    """mmalign's tiny LLaVA (its own `build_tiny`): the LM part equals the Llama closed form for
    its width, and a train step (LoRA-free: the whole LM) is ≥ 3× the LM's forward (+ lm head)."""
    c = load(["config/config.yaml"])["studies"]["mmalign"]
    tiny, w = c["model"]["tiny"], c["data"]["world"]
    info = M.llava_info(None, tiny, w["colours"], w["shapes"])
    assert info["tiles"] == 1 and info["image_tokens"] == (32 // 8) ** 2  # "default": no CLS
    T = info["image_tokens"] + 24
    f = M.llava_flops(None, tiny, w["colours"], w["shapes"], T, "forward")
    t = tiny["text"]
    V = M.llava_model(None, tiny, w["colours"], w["shapes"]).config.text_config.vocab_size
    assert f["lm"] == _llama_forward(t["width"], t["mlp"], V, T, t["layers"])
    tr = M.llava_flops(None, tiny, w["colours"], w["shapes"], T, "train")
    assert tr["lm"] >= 3 * f["lm"] - 2 * 2 * T * t["width"] * V and tr["vision"] == f["vision"]


def test_published_llava_shapes():
    """LLaVA-1.6-7B from its published config: 7.06 B parameters, a 640×480 image → 5 tiles and
    the processor's own token count; the depth-extrapolated count equals a full count."""
    info = M.llava_info("llava-hf/llava-v1.6-vicuna-7b-hf", None, None, None)
    assert 7.0e9 < info["params"] < 7.1e9 and info["tiles"] == 5
    assert 1500 < info["image_tokens"] <= 5 * 576 + 24


# ---- the DAG and the profile -------------------------------------------------------------------
def _paper_pipeline(tmp_path):
    from mmablate.cost import planning_config
    from mmablate.pipeline import Pipeline

    files = ["config/config.yaml", "config/scales/paper.yaml"]
    cfg = load([REPO / f for f in files])
    pcfg, stood = planning_config(cfg, tmp_path)
    return Pipeline(pcfg, files, write=False), stood


def test_paper_dag_without_the_data(tmp_path):
    """The paper DAG plans with no dataset at hand (every required path stood in) and gives the
    jobs per rule the mmalign pipeline test and `snakemake -n` give (454 jobs in all)."""
    from collections import Counter

    from mmablate.cost import dag_jobs, report_jobs

    P, stood = _paper_pipeline(tmp_path)
    assert any("data.root" in s for s in stood) and all(any(f"judge.{r}.endpoint" in s for s in stood)
                                                        for r in ("rank", "bench"))
    n = Counter(j[0] for j in dag_jobs(P))
    assert n["mmalign_bench"] == 28 * 7 and n["mmalign_dpo"] == 27 and n["rankclip_train"] == 27
    assert sum(n.values()) + sum(report_jobs(P).values()) + 1 == 454


@pytest.mark.slow
def test_dag_jobs_equal_snakemake_dry_run(tmp_path):
    """Jobs per rule of the smoke config: ours against `snakemake -n all`'s job stats."""
    from collections import Counter

    from .conftest import copy_workflow

    from mmablate.cost import dag_jobs, report_jobs
    from mmablate.pipeline import Pipeline

    wf = copy_workflow(tmp_path / "wf")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--configfile",
                        "config/scales/smoke.yaml"], cwd=wf, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = r.stdout[r.stdout.index("Job stats"):].split("\n\n")[0]
    snake = {ln.split()[0]: int(ln.split()[1]) for ln in stats.splitlines()[3:] if ln.strip()}
    files = ["config/config.yaml", "config/scales/smoke.yaml"]
    P = Pipeline(load([REPO / f for f in files]), files, write=False)
    ours = Counter(j[0] for j in dag_jobs(P)) + Counter(report_jobs(P))
    snake.pop("all"), snake.pop("total")
    assert dict(ours) == snake


def _smoke(**kw):
    from mmablate.cost import estimate

    return estimate(["config/config.yaml", "config/scales/smoke.yaml"], **kw)


@pytest.fixture(scope="module")
def smoke_est():
    M.use_cache(None)
    return _smoke()


def test_smoke_estimate(smoke_est):
    """Every model rule of the smoke DAG is priced (pairrank's world reward twins excepted),
    FLOPs > 0, jobs sum to the DAG, and each count names its basis."""
    e = smoke_est
    rules = {r["rule"]: r for r in e["rules"]}
    for rule in ("rankclip_train", "rankclip_eval", "pcclip_finetune", "pcclip_captions",
                 "pairrank_dpo", "pairrank_eval", "mmalign_dpo", "mmalign_sft"):
        assert rules[rule]["gpu_h"] > 0 and rules[rule]["priced"], rule
    assert not rules["pairrank_reward"]["priced"]
    assert e["total"]["jobs"] == sum(r["jobs"] for r in e["rules"]) + 1
    for j in e["jobs"]:
        for it in j["items"]:
            assert it["basis"] and all(b.split(":")[0] in ("data", "config", "published", "assumed")
                                       for b in it["basis"]), (j["rule"], it)


def test_table_and_json_output(smoke_est, capsys, tmp_path):
    from mmablate.cli import main
    from mmablate.cost import table

    text = table(smoke_est)
    assert "rankclip_train" in text and "total:" in text and "GPU-hours" in text
    out = tmp_path / "cost.json"
    assert main(["cost", "--configfile", "config/scales/smoke.yaml", "--no-cache",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["scale"] == "smoke" and data["total"]["gpu_h"] > 0
    assert "total:" in capsys.readouterr().out


def test_past_runtime_flag_and_resubmissions(tmp_path):
    """A runtime below the estimate names the rule, its jobs and the resubmissions; a request
    far above it is flagged as over-requested."""
    prof = yaml.safe_load((REPO / "profiles/slurm-small/config.yaml").read_text())
    base = _smoke(gpu="cpu", peak_tflops=1e-9, mfu=1.0)  # a device slow enough to overrun
    worst = max(j["wall_s"] for j in base["jobs"] if j["rule"] == "rankclip_train") / 60
    prof["set-resources"] = {**(prof.get("set-resources") or {}),
                             "rankclip_train": {"runtime": 1}, "rankclip_eval": {"runtime": 10**12}}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(prof))
    e = _smoke(gpu="cpu", peak_tflops=1e-9, mfu=1.0, profile=str(p))
    r = {x["rule"]: x for x in e["rules"]}
    tr = r["rankclip_train"]
    assert tr["flags"][0].startswith("PAST RUNTIME") and "resuming from checkpoints" in tr["flags"][0]
    assert tr["resubmissions"] == math.ceil(worst / 1) - 1 and tr["past_runtime_jobs"]
    assert any(f.startswith("over-requested") for f in r["rankclip_eval"]["flags"])
    assert "rankclip_train" in e["total"]["flagged"]


def test_bench_file_sets_training_throughput(tmp_path):
    """A `mmablate bench --json` result gives the training rule its measured FLOP/s."""
    b = tmp_path / "bench.json"
    b.write_text(json.dumps({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
                             "size": "paper", "results": [
                                 {"case": "rankclip", "flops": 2e15, "step_s": 10.0,
                                  "batch": 256}]}))
    e = _smoke(bench=str(b), gpu="auto")
    j = next(j for j in e["jobs"] if j["rule"] == "rankclip_train")
    assert j["gpu_s"] == pytest.approx(j["flops"] / 2e14)
    assert "bench bench.json" in j["items"][0]["time_basis"] and e["gpu"]["name"] == "H100"


def test_bad_inputs_name_the_file_and_key(tmp_path):
    from mmablate.errors import ConfigError

    with pytest.raises(ConfigError, match="--mfu"):
        _smoke(mfu=1.5)
    with pytest.raises(ConfigError, match="--gpu 'XPU9'"):
        _smoke(gpu="XPU9")
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"size": "smoke", "results": []}))
    with pytest.raises(ConfigError, match=r"b\.json: size 'smoke'"):
        _smoke(bench=str(bad))
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"b\.json: not a `mmablate bench --json`"):
        _smoke(bench=str(bad))


def test_gpu_table_agrees_with_bench():
    """The cost table's peaks agree with `mmablate bench`'s MFU table where both list a GPU."""
    from mmablate.bench import PEAK_BF16_TFLOPS
    from mmablate.cost.hardware import GPUS

    for name in ("H200", "H100", "A100", "L40S"):
        assert GPUS[name].bf16_tflops == PEAK_BF16_TFLOPS[name] and GPUS[name].source


# ---- the paper scale and the tiny reference ----------------------------------------------------
@pytest.mark.slow
def test_paper_estimate_under_a_minute(capsys):
    """`mmablate cost --configfile config/scales/paper.yaml` (cold: no count cache) prints
    per-rule and total GPU-hours of all four studies; reports its time."""
    from mmablate.cli import main

    t0, c0 = time.time(), time.process_time()
    assert main(["cost", "--configfile", "config/scales/paper.yaml", "--no-cache"]) == 0
    wall, cpu = time.time() - t0, time.process_time() - c0
    out = capsys.readouterr().out
    for rule in ("rankclip_train", "pcclip_finetune", "pairrank_dpo", "mmalign_dpo",
                 "mmalign_bench"):
        assert re.search(rf"\| {rule} +\| +\d+", out), rule
    assert "total: 454 jobs" in out
    print(f"\npaper estimate: {wall:.1f} s wall, {cpu:.1f} s CPU (cold)\n" + out)


README_RULES = {"rankclip-train": "rankclip_train", "pairrank-dpo": "pairrank_dpo",
                "pcclip-captioner": "pcclip_captioner", "mmalign-dpo": "mmalign_dpo",
                "pairrank-eval": "pairrank_eval", "mmalign-sft": "mmalign_sft",
                "pairrank-pretrain": "pairrank_base", "pcclip-finetune": "pcclip_finetune"}


def measured_tiny_cpu() -> dict:
    """rule → CPU s per job of the tiny default in benchmarks/README ("The tiny default with the
    fork server")."""
    text = (REPO / "benchmarks/README.md").read_text()
    sec = text[text.index("### The tiny default with the fork server"):]
    out = {}
    for line in sec.splitlines():
        m = re.match(r"\| ([a-z-]+)[^|]*\| (\d+) \| ([\d,]+) \| [\d,]+ \| ([\d.]+) \|", line)
        if m and m[1] in README_RULES:
            out[README_RULES[m[1]]] = float(m[4])
    return out


def cpu_matmul_flops() -> float:
    """This CPU's fp32 matrix-product rate on one thread (the tiny jobs' `threads: 1`)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(256, 256)
        best = 0.0
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(20):
                a @ a
            best = max(best, 20 * 2 * 256 ** 3 / (time.perf_counter() - t))
        return best
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
def test_tiny_estimate_against_measured_cpu_times():
    """The tiny estimate at this CPU's matmul rate (MFU 1) against the per-rule CPU seconds
    per job measured in benchmarks/README: the ratio is reported, not asserted (the tiny jobs
    are dominated by what FLOPs do not count: Python, data, element-wise work)."""
    from mmablate.cost import estimate

    meas = measured_tiny_cpu()
    assert len(meas) == len(README_RULES), meas
    rate = cpu_matmul_flops()
    e = estimate(["config/config.yaml"], gpu="cpu-1-thread", peak_tflops=rate / 1e12, mfu=1.0)
    lines = [f"this CPU: {rate / 1e9:.1f} GFLOP/s fp32 matmul, one thread",
             f"{'rule':<18} {'est s/job':>10} {'measured CPU s/job':>19} {'est/measured':>13}"]
    for rule, cpu in meas.items():
        js = [j for j in e["jobs"] if j["rule"] == rule]
        est = sum(j["gpu_s"] for j in js) / len(js)
        lines.append(f"{rule:<18} {est:>10.2f} {cpu:>19.1f} {est / cpu:>13.3f}")
        assert est > 0, rule
    print("\n" + "\n".join(lines))


def test_local_model_directory_counts_its_own_config(tmp_path):
    """A model given as a local directory (a rehearsal miniature, a downloaded checkpoint) is
    counted from its config.json, not from the published size of its name."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=50).save_pretrained(tmp_path / "llama")
    assert M.lm_flops(str(tmp_path / "llama"), None, None, 10) == _llama_forward(32, 64, 50, 10, 2)


@pytest.mark.slow
def test_rehearsal_grid_priced_from_its_data(tmp_path, monkeypatch):
    """paper.yaml + rehearsal.yaml with the rehearsal's assets written: the counts come from the
    assets (shard stats, parquet rows, JSON records) and the models from their local configs."""
    from mmablate.cost import estimate
    from mmablate.rehearsal import write_assets

    monkeypatch.chdir(tmp_path)
    write_assets("rehearsal/assets")
    for d in ("config", "workflow", "profiles"):
        (tmp_path / d).symlink_to(REPO / d)
    e = estimate(["config/config.yaml", "config/scales/paper.yaml", "config/scales/rehearsal.yaml"],
                 profile=str(REPO / "profiles/slurm"))
    jobs = {j["rule"]: j for j in e["jobs"]}
    tr = jobs["rankclip_train"]["items"][0]["basis"]
    assert any(b.startswith("data:") and "_stats.json" in b for b in tr), tr
    sc = jobs["pairrank_score"]["items"][0]
    assert sc["basis"][0].startswith("data:") and sc["samples"] < 1000
    dpo = jobs["mmalign_dpo"]["items"][0]
    assert dpo["flops_per_sample"] < 1e12  # a miniature, not the 7B model
    print(f"\nrehearsal grid: {e['total']['jobs']} jobs, {e['total']['gpu_h'] * 3600:.3g} GPU-s")
