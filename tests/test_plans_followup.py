"""A follow-up plan on an already ablated part (the research-log case): a second RankCLIP plan
asking for λ ∈ {0.0625, 0.5, 1.0} beside plan 003's grid. It checks, lists its new jobs, the
dry run plans exactly those, and its table appears beside the first plan's."""
import copy
import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import REPO, copy_workflow, only_study
from mmablate.config import load
from mmablate.pipeline import Pipeline, plans_dir
from mmablate.plans.load import plan_files
from mmablate.util import canonical

FOLLOWUP = REPO / "tests/data/plans/005_rankclip_followup.txt"


def _config(tmp_path, with_followup=True):
    d = tmp_path / "plans"
    d.mkdir(parents=True, exist_ok=True)
    for f in plan_files(REPO / "config/plans"):
        shutil.copy(f, d)
    if with_followup:
        shutil.copy(FOLLOWUP, d)
    cfg = load([REPO / "config/config.yaml"])
    cfg["plans_dir"] = str(d)
    return cfg


def test_followup_is_its_own_table_and_shares_the_baseline(tmp_path):
    P0 = Pipeline(_config(tmp_path / "a", False), ["config/config.yaml"], write=False)
    P1 = Pipeline(_config(tmp_path / "b"), ["config/config.yaml"], write=False)
    names = [a.name for a in P1.ablations]
    assert [n for n in names if n != "rankclip__rank_weight_p005"] == [a.name for a in P0.ablations]
    assert names.index("rankclip__rank_weight_p005") == names.index("rankclip__decay") + 1
    follow = P1.ablation("rankclip__rank_weight_p005")
    assert [r.value for r in follow.rows if r.kind == "variant"] == [0.0625, 0.5, 1.0]
    assert follow.key == "loss.rank_weight" and follow.metrics == \
        ["zeroshot_top1", "zeroshot_top3", "zeroshot_top5"]
    first = P1.ablation("rankclip__rank_weight")
    base = [r for r in follow.rows if r.is_baseline]
    assert len(base) == 1 and base[0].config_hash == \
        next(r for r in first.rows if r.is_baseline).config_hash
    # the first plan's tables are untouched: the same ablation configs, byte for byte
    for a in P0.ablations:
        assert canonical(P1.ablation_config(P1.ablation(a.name))) == \
            canonical(P0.ablation_config(a))
    # the follow-up adds exactly λ = 0.5 and λ = 1 (train + eval each)
    new = {st: set(hs) - set(P0.stages.get(st, {})) for st, hs in P1.stages.items()}
    assert {st: len(v) for st, v in new.items() if v} == {"rankclip_train": 2, "rankclip_eval": 2}


def test_plan_check_lists_the_new_jobs():
    from mmablate.cli import main
    import io
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", "check", str(FOLLOWUP)]) == 0
    text = out.getvalue()
    assert "follow-up: rankclip__rank_weight_p005 is its own table, beside the one of 003_" in text
    assert "rankclip_train ×2, rankclip_eval ×2" in text
    assert len(re.findall(r"new job: results/rankclip/train/[0-9a-f]+/s\{seed\}/model.pt", text)) == 2
    assert "tables: results/tables/rankclip__rank_weight_p005.md" in text


def _dry_run(wf, *extra):
    r = subprocess.run(["snakemake", "-n", "--cores", "1", "all", "--configfile",
                        "config/config.yaml", "config/scales/smoke.yaml", "only.yaml", *extra],
                       cwd=wf, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow  # two dry runs of a copied workflow (~15 s)
def test_dry_run_plans_exactly_the_listed_jobs(tmp_path):
    """With the first plan's outputs in place, adding the follow-up makes the dry run plan the
    jobs `plan check` lists (per seed), plus the follow-up's own table jobs and the metrics CSV."""
    from mmablate.plans.cli import new_jobs

    wf = copy_workflow(tmp_path / "wf")
    base = load([wf / "config/config.yaml"])
    (wf / "only.yaml").write_text(yaml.safe_dump(
        {"studies": {s: {"enabled": s == "rankclip"} for s in base["studies"]}}))
    out0 = _dry_run(wf)
    outputs = re.findall(r"^\s+output: (.+)$", out0, re.M)
    assert outputs
    for line in outputs:  # the first plan's run "done": every output present, newer than inputs
        for f in line.split(", "):
            p = wf / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
    assert "Nothing to be done" in _dry_run(wf)

    shutil.copy(FOLLOWUP, wf / "config/plans")
    out1 = _dry_run(wf)
    planned = [f for line in re.findall(r"^\s+output: (.+)$", out1, re.M) for f in line.split(", ")]

    cfg = only_study(load([REPO / "config/config.yaml", REPO / "config/scales/smoke.yaml"]),
                     "rankclip")
    cfg["plans_dir"] = str(wf / "config/plans")
    files = plan_files(plans_dir(cfg))
    P0 = Pipeline(copy.deepcopy(cfg), ["x"], write=False, plans=[f for f in files
                                                                 if f.name != FOLLOWUP.name])
    P1 = Pipeline(copy.deepcopy(cfg), ["x"], write=False, plans=files)
    expect = {P1.output(st, h, s) for st, h in new_jobs(P0, P1) for s in P1.seeds}
    stage_jobs = {f for f in planned if P1.job_of(f)}
    assert stage_jobs == expect
    other = sorted(set(planned) - stage_jobs)
    name = "rankclip__rank_weight_p005"
    assert other == sorted([f"results/ablations/{name}/metrics.csv", "results/metrics.csv",
                            f"results/figures/{name}.pdf", f"results/figures/{name}.png",
                            f"results/tables/{name}.csv", f"results/tables/{name}.md",
                            f"results/tables/{name}.tex"])
