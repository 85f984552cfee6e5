"""The rules that declare a GPU and the commands that claim one stay the same set (issue: 15 GPU
rules ran on cuda:0 because only rankclip-train claimed), read from the workflow itself."""
import pytest

from mmablate import cli, jobs

from .conftest import copy_workflow

SMOKE = ["config/config.yaml", "config/scales/smoke.yaml"]


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    d = copy_workflow(tmp_path_factory.mktemp("wf"))
    return jobs.load_rules(d, SMOKE)


def test_gpu_rules_equal_gpu_claiming_commands(rules):
    assert jobs.gpu_drift(rules, cli.gpu_subcommands()) == []
    gpu = {r.name for r in rules if "gpu" in r.resources}
    # every stage that trains, embeds, scores, captions, samples or evaluates with a model
    assert {"rankclip_train", "pcclip_captioner", "pcclip_captions", "pcclip_embed",
            "pcclip_finetune", "pcclip_eval", "pairrank_base", "pairrank_reward",
            "pairrank_score", "pairrank_dpo", "pairrank_eval", "mmalign_sft", "mmalign_bdhs",
            "mmalign_dpo", "mmalign_eval"} <= gpu
    assert not gpu & {"world", "pcclip_pairs", "pairrank_select", "collect", "table"}
    claim = cli.gpu_subcommands()
    for r in rules:  # and the other way round, spelled out
        cmds = jobs.mmablate_commands(r.shellcmd)
        if cmds:
            assert (cmds[-1] in claim) == ("gpu" in r.resources), (r.name, cmds)


def test_drift_in_a_rule_is_caught(tmp_path):
    d = copy_workflow(tmp_path / "wf")
    smk = d / "workflow/rules/pairrank.smk"
    text = smk.read_text()
    block = text.index("rule pairrank_score:")
    end = text.index("rule ", block + 5)
    cut = text[block:end].replace("        gpu=GPU,\n", "", 1)
    assert cut != text[block:end]
    smk.write_text(text[:block] + cut + text[end:])
    msgs = jobs.gpu_drift(jobs.load_rules(d, SMOKE), cli.gpu_subcommands())
    assert len(msgs) == 1 and "rule pairrank_score" in msgs[0] and "claims a GPU" in msgs[0], msgs


def test_drift_in_a_command_is_caught():
    rule = jobs.RuleInfo("pcclip_embed", {"gpu": 1}, "python -m mmablate pcclip-embed --config x",
                         0, False)
    assert jobs.gpu_drift([rule], cli.gpu_subcommands()) == []
    msgs = jobs.gpu_drift([rule], {"rankclip-train"})
    assert len(msgs) == 1 and "`pcclip-embed` does not claim" in msgs[0]
    gpu_less = jobs.RuleInfo("x", {"gpu": 0}, "echo no model here", 0, False)
    assert "runs no `python -m mmablate`" in jobs.gpu_drift([gpu_less], set())[0]


def test_launched_commands_are_the_stage():
    cmd = ("export PYTHONPATH=src; python -m mmablate launch --nproc {resources.gpu} -- "
           "rankclip-train --config c --seed 0 > {log} 2>&1")
    assert jobs.mmablate_commands(cmd) == ["launch", "rankclip-train"]
    assert jobs.mmablate_commands("python -m mmablate table --md x") == ["table"]
    assert jobs.mmablate_commands("echo hi") == []
    r = jobs.RuleInfo("rankclip_train", {"gpu": 2}, cmd.replace("{resources.gpu}", "2"), 0, False)
    claim = cli.gpu_subcommands()
    assert "without --nproc {resources.gpu}" in jobs.gpu_drift([r], claim)[0]
    assert jobs.gpu_drift([jobs.RuleInfo("rankclip_train", {"gpu": 2}, cmd, 0, False)], claim) == []


def test_local_slots_follow_the_machine():
    # --cores 8 on 2 CPUs: 4 slots per one-thread job, so at most 2 model jobs run at once
    f = jobs.slot_factor(8, 2, "local")
    assert f == 4 and jobs.compute_slots(1, f) == 4 and jobs.torch_threads(4, f) == 1
    assert jobs.slot_factor(2, 2, "local") == 1 and jobs.slot_factor(1, 16, "local") == 1
    assert jobs.slot_factor(64, 2, "slurm") == 1  # the profile's set-threads rules there
    # a job capped by snakemake at --cores keeps at least its share
    assert jobs.torch_threads(3, jobs.slot_factor(3, 2, "local")) == 2
    assert jobs.torch_threads(8, 1) == 8
