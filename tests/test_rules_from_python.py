"""The rules take their facts from Python (workflow/rules/common.smk): outputs from
`Pipeline.output_pattern` (studies/spec.py), log and benchmark paths from `stage_job`, the `src`
input from `imports.stage_sources` (what the stage's command imports) and the GPU mark from the
command's declaration (`imports.claims_gpu`). These test those functions, and the workflow as
Snakemake reads it."""
import pytest

from mmablate import jobs
from mmablate.imports import PLUMBING, claims_gpu, stage_sources
from mmablate.pipeline import Pipeline, stage_job, stage_outputs

from .conftest import copy_workflow

SMOKE = ["config/config.yaml", "config/scales/smoke.yaml"]


def rel(paths):
    assert all(p.startswith("src/mmablate/") for p in paths), paths
    return {p.removeprefix("src/mmablate/") for p in paths}


def test_rankclip_train_sources():
    src = rel(stage_sources("rankclip-train"))
    # the losses and the shard reader it trains through, the packages they live in
    assert {"studies/rankclip/losses.py", "studies/rankclip/train.py", "data/shards.py",
            "models/clip.py", "training/harness.py", "models/__init__.py",
            "studies/rankclip/cli.py"} <= src
    # nothing of another study, no plumbing, no parse-time pipeline code
    assert not any(p.startswith(("studies/pcclip", "studies/pairrank", "studies/mmalign"))
                   for p in src)
    assert not src & PLUMBING and "pipeline.py" not in src
    assert stage_sources("rankclip-train") == sorted(stage_sources("rankclip-train"))


def test_the_closure_follows_lazy_imports():
    """pairrank-eval imports its models inside functions; the closure still finds them (a
    hand-written list once missed models/, data/pickapic.py and training/)."""
    src = rel(stage_sources("pairrank-eval"))
    assert {"studies/pairrank/evaluate.py", "studies/pairrank/rewards.py", "models/clip.py",
            "data/pickapic.py", "training/checkpoint.py"} <= src
    assert not any(p.startswith("plans/") for p in src)


def test_the_commands_helpers_count():
    """mmalign-eval builds its judge in cli.py's `_judge` (lazy imports of judge.py and
    preflight.py); mmalign-merge merges in cli.py itself. A report command's module is the
    top-level cli: plumbing, left out."""
    ev = rel(stage_sources("mmalign-eval"))
    assert {"studies/mmalign/judge.py", "studies/mmalign/preflight.py",
            "studies/mmalign/evaluate.py", "studies/mmalign/cli.py"} <= ev
    assert "studies/mmalign/sft.py" not in ev  # another command's import in the same cli.py
    assert "studies/mmalign/cli.py" in rel(stage_sources("mmalign-merge"))
    assert rel(stage_sources("table")) == {"report/__init__.py", "report/tables.py",
                                           "report/summary.py", "report/flags.py"}


def test_unknown_command():
    with pytest.raises(ValueError, match="no `python -m mmablate rankclip-trian` command"):
        stage_sources("rankclip-trian")


def test_gpu_declaration():
    assert claims_gpu("rankclip-train") and claims_gpu("mmalign-dpo") and claims_gpu("pcclip-eval")
    assert not claims_gpu("world") and not claims_gpu("pairrank-select")
    assert not claims_gpu("table")


def test_output_patterns(smoke_config):
    P = Pipeline(smoke_config, ["smoke"], write=False)
    assert P.output_pattern("rankclip_train") == f"{P.results}/rankclip/train/{{h}}/s{{seed}}/model.pt"
    assert P.output_pattern("pairrank_eval", "samples.png") == \
        f"{P.results}/pairrank/eval/{{h}}/s{{seed}}/samples.png"
    assert P.output_pattern("world") == f"{P.results}/world/{{h}}/summary.json"
    for stage in stage_outputs():  # the pattern, filled in, is the job's output
        h = next(iter(P.stages.get(stage, {"0a1b": None})))
        seed = 1 if "{seed}" in stage_outputs()[stage] else None
        assert P.output_pattern(stage).format(h=h, seed=seed) == P.output(stage, h, seed)


def test_stage_job_names_logs_and_benchmarks():
    assert stage_job("world") == "world/{h}"
    assert stage_job("rankclip_train") == "rankclip/train/{h}/s{seed}"
    assert stage_job("pairrank_dpo") == "pairrank/dpo/{h}/s{seed}"  # not its lora/ subfolder
    assert stage_job("pairrank_distfig") == "pairrank/distfig/{h}"
    assert len({stage_job(s) for s in stage_outputs()}) == len(stage_outputs())


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return jobs.load_rules(copy_workflow(tmp_path_factory.mktemp("wf")), SMOKE)


def test_a_gpu_commands_rule_gets_the_gpu(rules):
    by_name = {r.name: r for r in rules}
    assert by_name["rankclip_train"].resources["gpu"] == 0  # GPU = config gpus (0 here)
    assert "gpu" not in by_name["world"].resources and "gpu" not in by_name["table"].resources
    n = 0
    for r in rules:
        cmds = jobs.mmablate_commands(r.shellcmd)
        if cmds:
            n += 1
            assert ("gpu" in r.resources) == claims_gpu(cmds[-1]), (r.name, cmds)
            assert stage_sources(cmds[-1])  # every rule's command has its sources
    assert n >= 28


def test_launched_commands_are_the_stage():
    cmd = ("export PYTHONPATH=src; python -m mmablate launch --nproc {resources.gpu} -- "
           "rankclip-train --config c --seed 0 > {log} 2>&1")
    assert jobs.mmablate_commands(cmd) == ["launch", "rankclip-train"]
    assert jobs.mmablate_commands("python -m mmablate table --md x") == ["table"]
    assert jobs.mmablate_commands("echo hi") == []


def test_local_slots_follow_the_machine():
    # --cores 8 on 2 CPUs: 4 slots per one-thread job, so at most 2 model jobs run at once
    f = jobs.slot_factor(8, 2, "local")
    assert f == 4 and jobs.compute_slots(1, f) == 4 and jobs.torch_threads(4, f) == 1
    assert jobs.slot_factor(2, 2, "local") == 1 and jobs.slot_factor(1, 16, "local") == 1
    assert jobs.slot_factor(64, 2, "slurm") == 1  # the profile's set-threads rules there
    # a job capped by snakemake at --cores keeps at least its share
    assert jobs.torch_threads(3, jobs.slot_factor(3, 2, "local")) == 2
    assert jobs.torch_threads(8, 1) == 8
