"""The rehearsal commands: `rehearsal-assets` and `rehearse` (mmablate.rehearsal.run) — what
ran, read from snakemake's own output — and, slow, the rehearsal itself: the paper DAG end to end
on this machine, every rule of it run (docs/rehearsal.md)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmablate.cli import main
from mmablate.errors import ConfigError
from mmablate.rehearsal import run as R
from mmablate.rehearsal.overlay import paths_only

from .conftest import REPO

# snakemake 9's output of a local run (excerpt of a real one): job blocks and Finished lines
LOG = """Job stats:
job      count
-----  -------
a            1
b            2
all          1
total        4

Select jobs to execute...
[Wed Dec  2 17:50:02 2026]
localrule a:
    output: out/a.txt
    log: logs/a.log
    jobid: 2
    reason: Missing output files: out/a.txt
    resources: tmpdir=/tmp

[Wed Dec  2 17:50:02 2026]
Finished jobid: 2 (Rule: a)
1 of 4 steps (25%) done
[Wed Dec  2 17:50:02 2026]
rule b:
    input: out/a.txt
    output: out/b1.txt
    jobid: 3
    wildcards: i=1

[Wed Dec  2 17:50:09 2026]
Finished jobid: 3 (Rule: b)
2 of 4 steps (50%) done
"""


def test_reads_job_stats_and_finished_jobs():
    assert R.job_stats(LOG) == {"a": 1, "b": 2, "all": 1}
    assert R.job_stats("Nothing to be done.") == {}
    jobs = R.finished_jobs(LOG)
    assert jobs[2] == {"rule": "a", "log": "logs/a.log", "start": "2026-12-02T17:50:02",
                       "end": "2026-12-02T17:50:02", "wall_s": 0.0}
    assert jobs[3]["rule"] == "b" and jobs[3]["wall_s"] == 7.0 and jobs[3]["log"] is None
    cov = R.coverage({"a": 1, "b": 2, "all": 1}, R.job_stats(LOG), jobs)
    assert cov["a"]["covered"] and cov["a"]["ran"] == 1
    assert not cov["b"]["covered"] and cov["b"]["ran"] == 1  # one of its two jobs did not run
    assert not cov["all"]["covered"]
    # a rule with nothing to do (up to date from an earlier run) is covered
    cov = R.coverage({"a": 1, "b": 2}, {"b": 1}, {3: jobs[3]})
    assert cov["a"] == {"planned": 1, "up_to_date": 1, "ran": 0, "wall_s": 0.0, "covered": True}
    assert cov["b"]["covered"] and cov["b"]["up_to_date"] == 1
    text = "\n".join(R.report_lines(cov))
    assert "NOT COVERED" not in text and text.splitlines()[-1].split()[1:4] == ["3", "1", "2"]


def test_rehearsal_assets_command(tmp_path, capsys):
    assert main(["rehearsal-assets", str(tmp_path / "a"), "--only", "imagenet"]) == 0
    out = capsys.readouterr().out
    assert '"classes": 1000' in out and "imagenet under" in out
    assert len(list((tmp_path / "a/imagenet/val").iterdir())) == 1000
    assert main(["rehearsal-assets", str(tmp_path / "a"), "--only", "imagenett"]) == 2
    assert "unknown module(s) ['imagenett']" in capsys.readouterr().err


def test_rehearse_arguments():
    a = __import__("mmablate.cli", fromlist=["parser"]).parser().parse_args(
        ["rehearse", "--cores", "4", "--fresh", "--overlay", "o.yaml", "--", "--keep-going",
         "--config", "x=1"])
    assert a.cores == 4 and a.fresh and a.assets == R.DEFAULT_ASSETS and a.overlay == ["o.yaml"]
    assert a.snakemake_args == ["--", "--keep-going", "--config", "x=1"]


def test_assets_elsewhere_moves_every_asset_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("o.yaml").write_text(yaml.safe_dump({"results": "rehearsal/results", "studies": {
        "rankclip": {"data": {"root": "rehearsal/assets/cc3m", "num_workers": 1}}}}))
    assert R.assets_overlay(R.DEFAULT_ASSETS, "o.yaml", tmp_path / "x.yaml") is None
    p = R.assets_overlay("/data/assets", "o.yaml", tmp_path / "x.yaml")
    assert yaml.safe_load(p.read_text()) == {
        "studies": {"rankclip": {"data": {"root": "/data/assets/cc3m"}}}}


def test_rehearse_refuses_what_is_not_a_rehearsal(tmp_path, monkeypatch):
    from mmablate.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no Snakefile here"):
        R.rehearse(configfiles=["c.yaml"], write_assets_first=False, judge=False)
    _toy(tmp_path, rehearsal=False)
    with pytest.raises(ConfigError, match="not a rehearsal config"):
        R.rehearse(configfiles=["c.yaml"], write_assets_first=False, judge=False)


def _toy(d: Path, rehearsal=True, failing=False):
    (d / "config").mkdir(parents=True, exist_ok=True)
    (d / "config/config.yaml").write_text(
        f"results: out\nrehearsal: {'true' if rehearsal else 'false'}\n")
    (d / "c.yaml").write_text("results: out\n")
    extra = ', R + "/c.txt"' if failing else ""
    (d / "Snakefile").write_text(f'''configfile: "config/config.yaml"
R = config["results"]
rule all:
    input: expand(R + "/b{{i}}.txt", i=range(2)){extra}
rule b:
    input: R + "/a.txt"
    output: R + "/b{{i}}.txt"
    log: "logs/b{{i}}.log"
    shell: "cp {{input}} {{output}}; echo copied > {{log}}"
rule a:
    output: R + "/a.txt"
    shell: "echo hi > {{output}}"
rule c:
    input: R + "/a.txt"
    output: R + "/c.txt"
    shell: "exit 3"
''')


@pytest.mark.slow  # four snakemake processes on a toy workflow (~10 s of CPU)
def test_rehearse_reports_what_ran(tmp_path, monkeypatch):
    """On a toy workflow: every job ran; then a rule that fails is reported as not covered,
    the jobs already done as up to date; the record is written."""
    monkeypatch.chdir(tmp_path)
    _toy(tmp_path)
    kw = dict(cores=1, configfiles=["c.yaml"], write_assets_first=False, judge=False, echo=False)
    rec = R.rehearse(**kw)
    assert rec["snakemake_rc"] == 0 and rec["uncovered"] == []
    assert {r: c["ran"] for r, c in rec["rules"].items()} == {"a": 1, "b": 2, "all": 1}
    assert {j["log"] for j in rec["jobs"].values() if j["rule"] == "b"} == {"logs/b0.log",
                                                                          "logs/b1.log"}
    assert json.loads(Path("out/rehearsal/coverage.json").read_text())["ran_jobs"] == 4
    _toy(tmp_path, failing=True)
    rec = R.rehearse(**kw)
    assert rec["snakemake_rc"] != 0 and set(rec["uncovered"]) == {"c", "all"}
    assert rec["rules"]["b"] == {"planned": 2, "up_to_date": 2, "ran": 0, "wall_s": 0.0,
                                 "covered": True}


# ---- the rehearsal itself -----------------------------------------------------------------------
def _launch_rules() -> set:
    """The rules whose command is `mmablate launch --nproc {resources.gpu}` (the training)."""
    import re

    out = set()
    for f in (REPO / "workflow/rules").glob("*.smk"):
        for m in re.finditer(r"^rule (\w+):\n((?:    .*\n|\n)*)", f.read_text(), re.M):
            if "mmablate launch --nproc" in m.group(2):
                out.add(m.group(1))
    return out


@pytest.mark.slow  # the rehearsal: 25-45 min on 2 cores (benchmarks/rehearsal.py measures it)
def test_rehearsal_runs_every_rule_of_the_paper_dag(tmp_path):
    """`python -m mmablate rehearse --fresh` in a copy of the workflow: the assets, the judge
    stand-in, the paper DAG with rehearsal.yaml. Every rule of the paper DAG runs, with the jobs
    per rule that paper.yaml's own DAG has (planned on the same data with paper.yaml's budgets
    and sizes); each training rule ran through `mmablate launch` with 2 ranks; every ablation's
    table and figure came out, saying it is a rehearsal."""
    from mmablate.config import load
    from mmablate.report.summary import REHEARSAL_NOTE

    wf = tmp_path / "wf"
    wf.mkdir()
    for name in ("Snakefile", "workflow", "config", "src", "envs", "profiles"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, wf / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                       if (REPO / name).is_dir() else {}))
    env = {**os.environ, "PYTHONPATH": str(wf / "src")}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "mmablate", "rehearse", "--cores", "2", "--fresh"],
                       cwd=wf, env=env, capture_output=True, text=True, timeout=60 * 60)
    out = r.stdout + r.stderr
    rec_path = wf / "rehearsal/results/rehearsal/coverage.json"
    assert rec_path.is_file(), out[-5000:]
    rec = json.loads(rec_path.read_text())
    assert r.returncode == 0 and rec["snakemake_rc"] == 0 and not rec["uncovered"], \
        "\n".join(R.report_lines(rec["rules"])) + "\n" + out[-5000:]

    # the paper DAG: paper.yaml with only rehearsal.yaml's paths (its budgets and sizes)
    base = load([wf / "config/config.yaml", wf / "config/scales/paper.yaml"])
    ov = yaml.safe_load((wf / "config/scales/rehearsal.yaml").read_text())
    po = paths_only(ov, base)
    po["results"] = str(tmp_path / "paper-plan")
    po["preflight"] = False  # a plan only (the rehearsal ran the checks on these files)
    (wf / "paths.yaml").write_text(yaml.safe_dump(po))
    d = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "all",
                        "--configfile", "config/scales/paper.yaml", "paths.yaml"], cwd=wf,
                       env=env, capture_output=True, text=True, timeout=600)
    paper = R.job_stats(d.stdout + d.stderr)
    assert d.returncode == 0 and paper, (d.stdout + d.stderr)[-3000:]
    assert {r: c["planned"] for r, c in rec["rules"].items()} == paper
    assert {r: c["ran"] for r, c in rec["rules"].items()} == paper  # fresh: every job ran

    # each training rule through `mmablate launch` with 2 CPU ranks (gloo)
    for rule in _launch_rules() & set(paper):
        logs = [wf / j["log"] for j in rec["jobs"].values() if j["rule"] == rule and j["log"]]
        assert logs and all("launch: 2 ranks on the CPU (gloo)" in p.read_text() for p in logs), \
            rule
        assert all(p.stat().st_mtime >= t0 for p in logs)

    # the tables and figures of every ablation, saying what they are
    P_abl = [p.stem for p in (wf / "rehearsal/results/configs/ablation").glob("*.json")]
    assert len(P_abl) == paper["table"] == paper["figure"]
    for name in P_abl:
        md = (wf / f"rehearsal/results/tables/{name}.md").read_text()
        assert "Scale: rehearsal" in md and REHEARSAL_NOTE in md, name
        assert (wf / f"rehearsal/results/figures/{name}.png").stat().st_size > 0
    assert not (wf / "results/tables").exists()  # the tiny scale's results are not touched


def test_judge_port_follows_the_merged_endpoint():
    """The stand-in listens where the jobs call it: an --overlay that moves the endpoint moves it."""
    url = "http://127.0.0.1:18799/v1"
    assert R.judge_port({"studies": {"mmalign": {"judge": {
        "rank": {"endpoint": url}, "bench": {"endpoint": url}}}}}) == 18799
    assert R.judge_port({"studies": {"mmalign": {"judge": {"bench": {"endpoint": url}}}}}) == 18799
    assert R.judge_port({"studies": {}}) == R.JUDGE_PORT
    with pytest.raises(ConfigError, match="judge.rank.endpoint and .bench.endpoint name two "
                                          "ports"):  # the stand-in serves both roles on one
        R.judge_port({"studies": {"mmalign": {"judge": {
            "rank": {"endpoint": url}, "bench": {"endpoint": "http://127.0.0.1:18800/v1"}}}}})
