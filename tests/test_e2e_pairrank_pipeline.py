"""Pair-ranking study through the pipeline: paper-scale config on local stand-ins, smoke run."""
import json
import subprocess

import pandas as pd
import pytest
import yaml

from .conftest import REPO, copy_workflow, only_study, with_ablations
from mmablate.config import merge as _merge
from mmablate.errors import ConfigError
from mmablate.pipeline import Pipeline


def paper_config(tmp_path):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    _merge(cfg, yaml.safe_load((REPO / "config/scales/paper.yaml").read_text()))
    only_study(with_ablations(cfg), "pairrank")
    (tmp_path / "pickapic").mkdir()
    pd.DataFrame({"caption": ["a cat"], "jpg_0": [b"x"], "jpg_1": [b"y"], "label_0": [1.0],
                  "label_1": [0.0]}).to_parquet(tmp_path / "pickapic/train-0.parquet")
    (tmp_path / "prompts.json").write_text(json.dumps({"val": ["a dog"], "eval": ["a cat"]}))
    pr = cfg["studies"]["pairrank"]
    pr["data"].update(pairs=str(tmp_path / "pickapic"), prompts=str(tmp_path / "prompts.json"))
    return cfg


def test_paper_config_uses_real_ids_and_says_what_is_missing(tmp_path):
    cfg = paper_config(tmp_path)
    P = Pipeline(cfg, ["paper.yaml"], results=str(tmp_path / "r"), write=False)
    ev = next(iter(P.stages["pairrank_eval"].values()))
    assert ev["metrics"]["image_reward"]["checkpoint"].endswith("ImageReward.pt")
    assert "pairrank_world" not in P.stages and "pairrank_base" not in P.stages
    assert "rankclip_train" not in P.stages  # no world CLIP at paper scale
    assert all("oracle" not in a.metrics for a in P.ablations)  # no oracle for real prompts
    dpo = next(iter(P.stages["pairrank_dpo"].values()))
    assert dpo["model"] == {"kind": "sd", "pretrained": "runwayml/stable-diffusion-v1-5"}
    score = next(iter(P.stages["pairrank_score"].values()))
    assert score["reward"]["source"] == "paper" and score["reward"]["kind"] == "hpsv2"
    assert score["pairs"] == str(tmp_path / "pickapic")
    labels = [m["label"] for m in P.ablation_config(P.ablations[0])["metrics"]]
    assert "PickScore" in labels and not any("twin" in x for x in labels)
    cfg["studies"]["pairrank"]["data"]["pairs"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="data.pairs: .*nowhere' does not exist"):
        Pipeline(cfg, ["paper.yaml"], write=False)


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"seeds": 1, "studies": {s: {"enabled": s == "pairrank"} for s in ("rankclip", "pcclip", "pairrank", "mmalign")}}))
    cmd = ["snakemake", "--cores", "2", "all", "--configfile", "config/config.yaml",
           "config/scales/smoke.yaml", str(overlay), "-q"]
    r = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = wf / "results"
    for ab in ("quality", "threshold"):
        table = (res / f"tables/pairrank__{ab}.md").read_text()
        assert "world twin" in table and "base model (no DPO)" in table
        assert (res / f"figures/pairrank__{ab}.png").stat().st_size > 0
    m = pd.read_csv(res / "metrics.csv")
    assert set(m.metric) == {"aesthetic", "image_reward", "pickscore", "hpsv2", "oracle"}
    ev = json.loads(next((res / "pairrank/eval").glob("*/s0/metrics.json")).read_text())
    assert "oracle" in ev["metrics"]
    assert list((res / "pairrank/distfig").glob("*/quality_distributions.png"))
    sels = [json.loads(p.read_text()) for p in (res / "pairrank/select").glob("*/selection.json")]
    assert {s["threshold"] for s in sels} == {"fixed", "dynamic", "adaptive"}
    # the world's ground truth of what each selection kept, beside the share among all pairs
    assert all(0 <= s["world_truth"]["kept"]["clean"] <= 1 and
               s["world_truth"]["all"]["n"] == s["n_pairs"] for s in sels)
    # a rerun has nothing to do (caching)
    r = subprocess.run(cmd + ["-n"], cwd=wf, capture_output=True, text=True, timeout=300)
    assert "Nothing to be done" in r.stdout + r.stderr


def test_world_tables_add_the_oracle_column(smoke_config, tmp_path):
    P = Pipeline(only_study(smoke_config, "pairrank"), ["smoke.yaml"], results=str(tmp_path),
                 write=False)
    assert P.ablations and all(a.metrics[-1] == "oracle" for a in P.ablations)
    labels = [m["label"] for m in P.ablation_config(P.ablations[0])["metrics"]]
    assert labels[-1] == "World oracle colour alignment" and len(labels) == len(set(labels))


def test_paper_dry_run_plans_every_pairrank_job(tmp_path):
    """`snakemake -n all` at the paper scale, on stand-in Pick-a-Pic shards: every pairrank job
    is planned (scoring once, selections, DPO per variant and seed, evaluations) with none
    failing at parse."""
    from mmablate.data.pickapic import write_standin

    wf = copy_workflow(tmp_path / "wf")
    write_standin(tmp_path / "pickapic", 30, 3)
    (tmp_path / "prompts.json").write_text(json.dumps({"val": ["a dog"], "eval": ["a cat"]}))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"preflight": False, "studies": {  # models absent here
        **{s: {"enabled": False} for s in ("rankclip", "pcclip", "mmalign")},
        "pairrank": {"data": {"source": "files", "pairs": str(tmp_path / "pickapic"),
                              "prompts": str(tmp_path / "prompts.json")}}}}))
    r = subprocess.run(["snakemake", "-n", "all", "--configfile", "config/config.yaml",
                        "config/scales/paper.yaml", str(overlay)], cwd=wf, capture_output=True,
                       text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    stats = dict(l.split()[:2] for l in out.split("Job stats:")[1].splitlines()[3:] if l.strip()
                 and l.split()[0].startswith("pairrank_"))
    assert int(stats["pairrank_score"]) == 1 and int(stats["pairrank_dpo"]) > 1
    assert {"pairrank_select", "pairrank_eval", "pairrank_distfig"} <= set(stats)
    assert "pairrank_world" not in stats and "pairrank_base" not in stats
