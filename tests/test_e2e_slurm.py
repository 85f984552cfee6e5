"""The workflow through profiles/slurm against a real single-node SLURM (tests/slurm/cluster.sh).

Skips only when the cluster cannot be installed here (cluster.sh exits 77: no apt-get, not root).
The smoke scale of every enabled study runs through the SLURM profile for that scale
(profiles/slurm-small) and locally; the metrics must be equal, and `sacct` must show every
submitted job COMPLETED with the resources the profile gives it: one GPU for the rules that
declare `gpu=GPU`, none for CPU stages. A 2-GPU RankCLIP training job (fake GPUs) runs its two
ranks (`mmablate launch --nproc 2`, gloo on the CPU) inside one SLURM job.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import REPO, copy_workflow

pytestmark = pytest.mark.slow
CLUSTER = REPO / "tests/slurm/cluster.sh"
SLURM_RUN_LIMIT = 1500  # seconds (four studies at smoke scale); snakemake is SIGKILLed past it
PROFILE = "profiles/slurm-small"  # the smoke/tiny sizes (profiles/slurm is the paper scale's)


@pytest.fixture(scope="module")
def cluster():
    """A running cluster: reused if one runs, else started here and stopped afterwards."""
    was_up = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0
    p = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
    if p.returncode == 77:
        pytest.skip(f"SLURM cannot be installed here: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, f"cluster.sh up failed ({p.returncode}):\n{p.stderr[-3000:]}"
    yield
    if not was_up:
        subprocess.run(["bash", str(CLUSTER), "down"], timeout=120)


def gpu_rules() -> set:
    """Rules whose resources declare a GPU: `compute_resources("<command>")` adds gpu=GPU when
    the command is a GPU stage (mmablate.imports.claims_gpu; workflow/rules/common.smk)."""
    from mmablate.imports import claims_gpu

    out = set()
    for f in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.split(r"^rule ", f.read_text(), flags=re.M)[1:]:
            m = re.search(r'compute_resources\("([a-z0-9-]+)"\)', block)
            if m and claims_gpu(m.group(1)):
                out.add(block.split(":", 1)[0].strip())
    return out


def fit_profile(dst: Path, cpus: int = 1, mem_mb: int = 1000, profile: str = PROFILE):
    """The shipped profile with CPUs/memory capped to the one test node (partitions, GPUs and
    runtimes are kept as a user gets them)."""
    path = dst / profile / "config.yaml"
    prof = yaml.safe_load(path.read_text())
    for res in [prof["default-resources"], *prof.get("set-resources", {}).values()]:
        if "cpus_per_task" in res:
            res["cpus_per_task"] = min(res["cpus_per_task"], cpus)
        if "mem_mb" in res:
            res["mem_mb"] = min(res["mem_mb"], mem_mb)
    if prof.get("set-threads"):
        prof["set-threads"] = {k: min(v, cpus) for k, v in prof["set-threads"].items()}
    prof["retries"] = 0
    path.write_text(yaml.safe_dump(prof))


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def _sacct(ids):
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(ids), "-o",
                          "JobID,Partition,AllocTRES,State,Elapsed"],
                         capture_output=True, text=True, check=True).stdout
    return {l.split("|")[0]: l.split("|") for l in out.splitlines() if l.strip()}


def small_overlay(cfg: dict) -> dict:
    """Smoke scale, one seed, and each ablation cut to its first listed value (plus the
    baseline, added by the pipeline): every stage of every enabled study still runs, in a few
    jobs per study, so the test stays within minutes on a 2-core node."""
    studies = {}
    for sid, scfg in cfg["studies"].items():
        if scfg.get("enabled", False):
            studies[sid] = {"ablations": [dict(ab, values=list(ab["values"][:1]))
                                          for ab in scfg["ablations"]]}
    return {"seeds": 1, "studies": studies}


def test_smoke_through_slurm_equals_local(cluster, smoke_config, tmp_path):
    overlay = small_overlay(smoke_config)
    runs = {}
    for kind in ("local", "slurm"):
        (tmp_path / kind).mkdir()
        d = copy_workflow(tmp_path / kind)
        (d / "overlay.yaml").write_text(yaml.safe_dump(overlay))
        args = ["snakemake", "all", "--configfile", "config/scales/smoke.yaml", "overlay.yaml"]
        if kind == "slurm":
            fit_profile(d)
            args = ["timeout", "-s", "KILL", str(SLURM_RUN_LIMIT), *args, "--profile",
                    PROFILE, "--slurm-init-seconds-before-status-checks", "2"]
        else:
            args += ["--cores", "2"]
        t0 = time.time()
        with open(d / "run.log", "w") as log:  # one after the other: the node is this machine
            rc = subprocess.run(args, cwd=d, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        text = (d / "run.log").read_text()
        assert rc == 0, f"{kind} run failed (rc {rc}; -9/137 = killed after {SLURM_RUN_LIMIT}s):\n" \
                        f"{text[-4000:]}"
        print(f"{kind} run: {time.time() - t0:.0f} s wall")
        runs[kind] = (d, None, None)

    (dl, _, _), (ds, _, _) = runs["local"], runs["slurm"]
    local = pd.read_csv(dl / "results/metrics.csv")
    slurm = pd.read_csv(ds / "results/metrics.csv")
    assert len(local) > 0 and list(local.columns) == list(slurm.columns)
    key = [c for c in local.columns if c not in ("value", "chance")]
    m = local.merge(slurm, on=key, suffixes=("_local", "_slurm"), how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m[m["_merge"] != "both"]
    for c in local.columns:
        if c not in key:  # same seed, same CPU code: the smoke metrics are identical
            a, b = m[f"{c}_local"], m[f"{c}_slurm"]
            # equal, or both empty (a metric without a chance level has NaN in both runs)
            assert ((a == b) | (a.isna() & b.isna())).all(), m[[f"{c}_local", f"{c}_slurm"]]

    # every job the profile submitted, with its rule, and what SLURM gave it
    text = (ds / "run.log").read_text()
    sub = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([A-Za-z0-9_]+)/", text)
    assert sub, text[-3000:]
    acct = _sacct([j for j, _ in sub])
    gpu = gpu_rules()
    assert gpu, "no rule declares gpu=GPU"
    print("jobid  rule  partition  AllocTRES  state  elapsed")
    for jobid, rule in sub:
        _, part, tres, state, elapsed = acct[jobid]
        print(jobid, rule, part, tres, state, elapsed)
        assert state == "COMPLETED", (jobid, rule, state)
        assert ("gres/gpu=1" in tres) == (rule in gpu), (rule, tres)
    ran = {r for _, r in sub}
    assert gpu & ran, f"no GPU rule ({sorted(gpu)}) was submitted: {sorted(ran)}"


def test_failing_job_fails_the_run_with_its_log(cluster, tmp_path):
    (tmp_path / "w").mkdir()
    d = copy_workflow(tmp_path / "w")
    fit_profile(d)
    (d / "Snakefile").write_text(
        'rule all:\n    input: "out.txt"\n\n'
        'rule broken:\n    output: "out.txt"\n    log: "logs/broken.log"\n'
        '    shell: "echo the job failed on purpose > {log}; exit 3"\n')
    p = subprocess.run(["timeout", "-s", "KILL", "120", "snakemake", "--profile", PROFILE,
                        "--slurm-init-seconds-before-status-checks", "2"],
                       cwd=d, env=_env(), capture_output=True, text=True)
    out = p.stdout + p.stderr
    assert p.returncode not in (0, 137), out[-3000:]
    assert "Error in rule broken" in out, out[-3000:]
    m = re.search(r"(/\S*/slurm_logs/rule_broken/\S*\.log)", out)
    assert m, f"no SLURM log path in the output:\n{out[-3000:]}"
    assert "logs/broken.log" in out and "the job failed on purpose" in out
    assert Path(m.group(1)).is_file()


def test_two_gpu_training_job_runs_two_ranks(cluster, smoke_config, tmp_path):
    """rankclip_train with `gpu: 2` (profile set-resources): one SLURM job with two (fake) GPUs
    whose command starts two ranks (`mmablate launch --nproc 2`; gloo on this CPU)."""
    overlay = small_overlay(smoke_config)
    for sid in list(overlay["studies"]):
        if sid != "rankclip":
            overlay["studies"][sid] = {"enabled": False}
    # the smoke world's 256 images in 4 shards: each of the 2 ranks streams its own
    overlay.setdefault("world", {})["shard_size"] = 64
    (tmp_path / "w").mkdir()
    d = copy_workflow(tmp_path / "w")
    (d / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    fit_profile(d)
    path = d / PROFILE / "config.yaml"
    prof = yaml.safe_load(path.read_text())
    prof["set-resources"]["rankclip_train"]["gpu"] = 2
    path.write_text(yaml.safe_dump(prof))
    args = ["timeout", "-s", "KILL", "900", "snakemake", "all", "--configfile",
            "config/scales/smoke.yaml", "overlay.yaml", "--profile", PROFILE,
            "--slurm-init-seconds-before-status-checks", "2"]
    with open(d / "run.log", "w") as log:
        rc = subprocess.run(args, cwd=d, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    text = (d / "run.log").read_text()
    assert rc == 0, f"run failed (rc {rc}):\n{text[-4000:]}"
    sub = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_([A-Za-z0-9_]+)/", text)
    train = [j for j, r in sub if r == "rankclip_train"]
    assert train, text[-3000:]
    acct = _sacct(train)
    for j in train:
        _, part, tres, state, _ = acct[j]
        print(j, part, tres, state)
        assert state == "COMPLETED" and "gres/gpu=2" in tres and part == "gpu", acct[j]
    logs = sorted((d / "logs/rankclip/train").glob("*/s0.log"))
    assert logs
    for lg in logs:
        t = lg.read_text()
        assert "launch: 2 ranks" in t and "all 2 ranks finished" in t, t[-2000:]
        assert '"world_size": 2' in t, t[-2000:]
        assert Path(str(lg) + ".ranks").is_dir()  # the per-rank logs beside the job's log
    assert list((d / "results/rankclip/eval").glob("*/s0/metrics.json"))
