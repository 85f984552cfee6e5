"""mmalign in the pipeline: variants and shared stages, the paper-scale config, and a smoke run
through snakemake."""
import copy
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, copy_workflow, with_ablations
from mmablate.config import merge as _merge
from mmablate.errors import ConfigError
from mmablate.pipeline import Pipeline

ONLY = {"studies": {s: {"enabled": False} for s in ("rankclip", "pcclip", "pairrank")}}


def cfg(*overlays):
    c = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for o in overlays:
        _merge(c, copy.deepcopy(o) if isinstance(o, dict) else
               yaml.safe_load((REPO / o).read_text()))
    return with_ablations(c)


def test_variants_share_the_base_and_the_bdhs_data():
    P = Pipeline(cfg(ONLY), write=False)
    assert [a.name for a in P.ablations] == ["mmalign__gamma", "mmalign__mix_p"]
    assert len(P.stages["mmalign_dpo"]) == 9  # 5 + 5 values, the baseline shared
    assert len(P.stages["mmalign_sft"]) == 1 and len(P.stages["mmalign_bdhs"]) == 1
    # eval.jobs: per_model (the tiny default): the benchmarks run inside the DPO/eval jobs
    assert "mmalign_bench" not in P.stages and len(P.stages["mmalign_eval"]) == 1
    assert len(P.stages["mmalign_data"]) == 1
    by_gamma = {c["bdhs"]["gamma"]: c for c in P.stages["mmalign_dpo"].values()
                if c["mixed_dpo"]["p"] == 0.5}
    assert by_gamma[1.0]["bdhs_file"] is None and by_gamma[0.0]["bdhs_file"]
    a = P.ablations[0]
    assert [r.label for r in a.rows] == ["γ = 0", "γ = 0.25", "γ = 0.5", "γ = 0.75", "γ = 1",
                                         "base (SFT)"]
    assert [r.is_baseline for r in a.rows].count(True) == 1 and a.rows[-1].kind == "reference"
    assert P.config["studies"]["mmalign"]["plan"] == "004"


def test_bad_values_are_config_errors():
    bad = cfg(ONLY)
    bad["studies"]["mmalign"]["ablations"][0]["values"] = [0.5, 1.5]
    with pytest.raises(ConfigError, match=r"ablations\[0\].values\[1\]: γ \(bdhs.gamma\) must be"):
        Pipeline(bad, write=False)
    bad = cfg(ONLY)
    bad["studies"]["mmalign"]["bdhs"]["rho_th"] = 2
    with pytest.raises(ConfigError, match="bdhs.rho_th"):
        Pipeline(bad, write=False)


def test_paper_scale_config_needs_a_judge_endpoint(tmp_path):
    c = cfg("config/scales/paper.yaml", ONLY)
    with pytest.raises(ConfigError, match="judge.rank.endpoint: .*OpenAI-compatible judge "
                                          "endpoint .*llava-v1.6-34b"):
        Pipeline(c, write=False)
    c["studies"]["mmalign"]["judge"]["rank"]["endpoint"] = "http://judge:8000/v1"
    with pytest.raises(ConfigError, match="judge.bench.endpoint: the judge that scores MMHal"):
        Pipeline(c, write=False)
    c["studies"]["mmalign"]["judge"]["bench"]["endpoint"] = "http://judge:8001/v1"
    P = Pipeline(c, results=str(tmp_path), write=False)
    assert "mmalign_sft" not in P.stages and "mmalign_data" not in P.stages
    dpo = next(iter(P.stages["mmalign_dpo"].values()))
    assert dpo["model"]["base"] == "llava-hf/llava-v1.6-vicuna-7b-hf"
    assert dpo["model"]["lora"]["r"] == 128 and dpo["model"]["lora"]["alpha"] == 256
    bd = next(iter(P.stages["mmalign_bdhs"].values()))
    assert bd["bdhs"]["embedder"] == "sentence-transformers/all-mpnet-base-v2"
    assert bd["reference"] == dpo["model"]["base"]


@pytest.mark.slow
def test_smoke_run_through_snakemake(tmp_path):
    wf = copy_workflow(tmp_path)
    (wf / "overlay.yaml").write_text(yaml.safe_dump(ONLY))
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "all", "--configfile",
                        "config/scales/smoke.yaml", "overlay.yaml"], cwd=wf,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import pandas as pd

    df = pd.read_csv(wf / "results/metrics.csv")
    assert set(df["ablation"]) == {"gamma", "mix_p"}
    assert {"pope", "mmhal", "mmhalv", "llavaw", "vqat", "gqa", "mmvet", "recall_coco"} <= \
        set(df["metric"])
    for ab in ("gamma", "mix_p"):
        assert (wf / f"results/tables/mmalign__{ab}.md").is_file()
        assert (wf / f"results/figures/mmalign__{ab}.png").is_file()
    assert list((wf / "results/mmalign/bdhs").glob("*/bdhs_stats.json"))


@pytest.mark.slow  # ~5 s of CPU, but a snakemake process parsing 260 jobs
def test_paper_scale_dry_run_plans_every_mmalign_job(tmp_path):
    """`snakemake -n all --configfile config/scales/paper.yaml` (stand-in dataset paths that do
    not exist here, a judge endpoint) plans the training jobs and one benchmark job per
    (model, benchmark): 9 variants × 3 seeds + the base = 28 models × 7 benchmarks."""
    wf = copy_workflow(tmp_path)
    (wf / "overlay.yaml").write_text(yaml.safe_dump(  # no data here: no preflight (its own test)
        {**ONLY, "preflight": False, "studies": {**ONLY["studies"],
                             "mmalign": {"judge": {
                                 "rank": {"endpoint": "http://judge.invalid:8000/v1"},
                                 "bench": {"endpoint": "http://judge.invalid:8001/v1"}}}}}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--configfile",
                        "config/scales/paper.yaml", "overlay.yaml"], cwd=wf,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stats = r.stdout[r.stdout.index("Job stats"):].split("\n\n")[0]
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in stats.splitlines()[3:] if ln.strip()}
    assert counts["mmalign_bench"] == 28 * 7 and counts["mmalign_merge"] == 28
    assert counts["mmalign_dpo"] == 27 and counts["mmalign_bdhs"] == 1
    assert "mmalign_sft" not in counts and "mmalign_eval" not in counts
