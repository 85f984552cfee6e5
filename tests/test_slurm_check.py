"""Requests no node can run are refused before submission (mmablate.slurm_check), from canned
`sinfo` output; and the workflow's onstart hook really stops a SLURM run before any sbatch."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mmablate import jobs
from mmablate.slurm_check import (Request, SlurmCheckError, check, check_sizes, parse_gres,
                                  parse_sinfo, parse_time, request_of)

from .conftest import REPO, copy_workflow

# a 2-CPU single node with one (fake) GPU, as the test cluster and tests/slurm/cluster.sh
SMALL = "cpu*|node01|2|3500|gpu:1|infinite|up\ngpu|node01|2|3500|gpu:1|infinite|up\n"
# a typical GPU cluster
BIG = """cpu*|c01|64|256000|(null)|3-00:00:00|up
cpu*|c02|64|256000|(null)|3-00:00:00|up
gpu|g01|32|512000|gpu:a100:4(S:0-1)|2-00:00:00|up
gpu|g02|48|1024000|gpu:h100:8(S:0-1)|2-00:00:00|up
debug|c01|64|256000|(null)|30:00|up
"""


def test_parse_sinfo():
    parts = parse_sinfo(BIG)
    assert sorted(parts) == ["cpu", "debug", "gpu"]
    assert parts["cpu"].default and not parts["gpu"].default
    assert parts["gpu"].max_minutes == 2 * 1440 and parts["debug"].max_minutes == 30
    g01 = parts["gpu"].nodes[0]
    assert (g01.cpus, g01.mem_mb, g01.gpus) == (32, 512000, {"a100": 4})
    assert parse_gres("gpu:a100:2,gpu:v100:1(S:0)") == {"a100": 2, "v100": 1}
    assert parse_gres("(null)") == {} and parse_gres("gpu:2") == {"": 2}
    assert parse_time("infinite") is None and parse_time("1-12") == 36 * 60
    assert parse_time("2:00:00") == 120 and parse_time("45") == 45
    with pytest.raises(SlurmCheckError, match="expected 7 fields"):
        parse_sinfo("cpu|node01|2\n")


def test_request_as_the_plugin_reads_it():
    r = request_of("rankclip_train", {"slurm_partition": "gpu", "gpu": 2, "cpus_per_task": 8,
                                      "mem_mb": 32000, "runtime": 720}, threads=4)
    assert (r.partition, r.cpus, r.mem_mb, r.gpus, r.runtime) == ("gpu", 8, 32000, 2, 720)
    r = request_of("x", {"gpu": 2, "cpus_per_gpu": 4, "mem_mb_per_cpu": 1000}, threads=1)
    assert (r.cpus, r.mem_mb, r.cpus_key) == (8, 8000, "cpus_per_gpu")
    r = request_of("x", {"gres": "gpu:a100:1"}, threads=3)  # no CPU resource: the threads
    assert (r.cpus, r.gpus, r.gpu_model, r.partition, r.cpus_key) == (3, 1, "a100", None, "threads")


def test_what_no_node_can_run_is_refused_by_rule_and_resource():
    reqs = [Request("rankclip_train", "gpu", 8, 32000, 1, None, 720),
            Request("rankclip_eval", None, 4, 16000, 0, None, 60),
            Request("world", None, 1, 1000, 0, None, 30)]
    with pytest.raises(SlurmCheckError) as e:
        check(reqs, SMALL)
    msg = str(e.value)
    assert "rule rankclip_train: cpus_per_task=8 CPUs, but the largest node of partition 'gpu' " \
           "has 2" in msg
    assert "rule rankclip_train: mem_mb=32000" in msg and "rule rankclip_eval: cpus_per_task=4" in msg
    assert "rule world" not in msg  # fits
    check(reqs, BIG)  # the same requests fit a real cluster


def test_partition_gpu_and_time_limits():
    bad = [Request("a", "a100", 1, 1000), Request("b", "gpu", 8, 1000, 2, "v100"),
           Request("c", "debug", 1, 1000, 0, None, 60), Request("d", "gpu", 40, 600000, 4)]
    with pytest.raises(SlurmCheckError) as e:
        check(bad, BIG)
    msg = str(e.value)
    assert "rule a: slurm_partition='a100' is not a partition" in msg
    assert "rule b: gpu=2 (gpu_model='v100'), but no node of partition 'gpu' has more than 0" in msg
    assert "rule c: runtime=60 min exceeds the time limit of partition 'debug' (30 min)" in msg
    # 40 CPUs (g02 has 48) and 600 GB (g02 has 1 TB) and 4 GPUs (both have them): g02 fits all
    check([bad[3]], BIG)
    with pytest.raises(SlurmCheckError, match="no single node of partition 'gpu' has 40 CPUs"):
        check([Request("d", "gpu", 40, 600000, 0), Request("e", "gpu", 40, 600000, 8, "a100")]
              [:1] + [Request("f", "gpu", 40, 100, 4, "a100")], BIG)


def test_profile_sized_for_another_scale_is_refused():
    check_sizes(["paper", "paper"], "paper")
    check_sizes(["small", None], "smoke")
    with pytest.raises(SlurmCheckError, match="use --profile profiles/slurm-small"):
        check_sizes(["paper"], "smoke")
    with pytest.raises(SlurmCheckError, match="use --profile profiles/slurm$"):
        check_sizes(["small"], "paper")


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return jobs.load_rules(copy_workflow(tmp_path_factory.mktemp("wf")),
                           ["config/config.yaml", "config/scales/smoke.yaml"])


def test_shipped_profiles_size_every_rule(rules):
    import yaml

    names = {r.name for r in rules if not r.local and r.shellcmd}
    gpu = {r.name for r in rules if "gpu" in r.resources}
    for prof in ("slurm", "slurm-small"):
        p = yaml.safe_load((REPO / f"profiles/{prof}/config.yaml").read_text())
        sets = p["set-resources"]
        assert set(sets) <= names, set(sets) - names
        for r in gpu:  # every GPU rule: a GPU partition and a GPU count
            assert sets[r]["slurm_partition"] == "gpu" and sets[r]["gpu"] >= 1, (prof, r)
        if prof == "slurm":  # paper: every rule sized explicitly, threads too
            assert set(sets) == names and set(p["set-threads"]) == names
            for r in names:
                assert {"runtime", "mem_mb", "cpus_per_task"} <= set(sets[r]), r
    paper = jobs.profile_requests(jobs.read_profile(REPO / "profiles/slurm"), rules)
    small = jobs.profile_requests(jobs.read_profile(REPO / "profiles/slurm-small"), rules)
    assert {r.rule for r in paper} == names == {r.rule for r in small}
    check(paper, BIG)
    check(small, SMALL)  # the smoke/tiny sizes fit the 2-CPU test node
    with pytest.raises(SlurmCheckError, match="rule rankclip_train: cpus_per_task=16"):
        check(paper, SMALL)
    assert max(r.cpus for r in small) == 1 and max(r.mem_mb for r in small) <= 2000


FAKE = {  # fake SLURM client commands: sinfo answers; sbatch records that it was called
    "sinfo": f"#!/bin/sh\nprintf '{SMALL}'\n",
    "sbatch": "#!/bin/sh\necho called >> \"$FAKE_SLURM_LOG\"\necho 'Submitted batch job 1'\n",
    "sacct": "#!/bin/sh\nexit 0\n", "sacctmgr": "#!/bin/sh\nexit 0\n",
    "squeue": "#!/bin/sh\nexit 0\n", "scontrol": "#!/bin/sh\nexit 0\n",
    "scancel": "#!/bin/sh\nexit 0\n",
}


def _fake_slurm(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in FAKE.items():
        (bin_ / name).write_text(body)
        (bin_ / name).chmod(stat.S_IRWXU)
    env = dict(os.environ, FAKE_SLURM_LOG=str(tmp_path / "sbatch.log"), HF_HUB_OFFLINE="1")
    env["PATH"] = f"{bin_}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.parametrize("profile,big,expect", [
    pytest.param("profiles/slurm", False, "use --profile profiles/slurm-small",
                 marks=pytest.mark.slow),  # check_sizes is tested above; this is its hook
    ("profiles/slurm-small", True,
     "rule rankclip_train: cpus_per_task=8 CPUs, but the largest node of partition 'gpu' has 2"),
])
def test_onstart_stops_a_slurm_run_before_sbatch(tmp_path, smoke_config, profile, big, expect):
    import yaml

    d = copy_workflow(tmp_path / "wf")
    if big:  # the case: 8 CPUs asked of a 2-CPU node
        prof = d / profile / "config.yaml"
        prof.write_text(prof.read_text().replace(
            'rankclip_train: {slurm_partition: "gpu", gpu: 1}',
            'rankclip_train: {slurm_partition: "gpu", gpu: 1, cpus_per_task: 8}'))
    # the smoke scale of one study, one seed: a small DAG (the hook sees every job of it)
    only = {"seeds": 1, "studies": {s: {"enabled": s == "rankclip"} for s in smoke_config["studies"]}}
    (d / "one.yaml").write_text(yaml.safe_dump(only))
    env = _fake_slurm(tmp_path)
    p = subprocess.run(["timeout", "-s", "KILL", "300", "snakemake", "--profile", profile,
                        "all", "--configfile", "config/scales/smoke.yaml", "one.yaml"], cwd=d,
                       env=env, capture_output=True, text=True)
    out = p.stdout + p.stderr
    assert p.returncode not in (0, 137), out[-3000:]
    assert expect in out, out[-3000:]
    assert not (tmp_path / "sbatch.log").exists(), "a job was submitted before the check"
