"""Every config key is checked: unknown keys, wrong types and out-of-range values at every
nesting level of every study block, at every scale, are refused naming the file(s) and the
dotted key — by the pipeline's validation, by `check-config` and by `snakemake -n`."""
import copy
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, STUDY_IDS
from mmablate.config import load
from mmablate.errors import ConfigError
from mmablate.pipeline import Pipeline, schema_errors, validate, validate_schema

SCALES = {"tiny": [], "smoke": ["config/scales/smoke.yaml"], "paper": ["config/scales/paper.yaml"]}


def files(scale):
    return [str(REPO / "config/config.yaml")] + [str(REPO / f) for f in SCALES[scale]]


def walk(d, pre=()):
    """(path, value) of every node below `d` (dicts and leaves; list items not entered)."""
    for k, v in d.items():
        p = pre + (k,)
        yield p, v
        if isinstance(v, dict):
            yield from walk(v, p)


def overlay(tmp_path, study, path, value, name="my_overlay.yaml"):
    """An overlay file setting studies.<study>.<path> = value; returns its path."""
    node = value
    for k in reversed(path):
        node = {k: node}
    f = tmp_path / name
    f.write_text(yaml.safe_dump({"studies": {study: node}}))
    return str(f)


def refused(cfg_files, key, full=False):
    """The ConfigError message for these files; asserts it names the files and the key."""
    cfg = load(cfg_files)
    with pytest.raises(ConfigError) as e:
        (validate if full else validate_schema)(cfg, cfg_files)
    msg = str(e.value)
    assert " + ".join(cfg_files) in msg, msg
    assert key in msg, (key, msg)
    return msg


@pytest.mark.parametrize("scale", SCALES)
def test_every_scale_validates(scale):
    cfg = load(files(scale))
    assert schema_errors(cfg, files(scale)) == []
    if scale != "paper":  # paper's data roots do not exist here (the study checks say so)
        P = Pipeline(cfg, files(scale), write=False)
        assert {a.study for a in P.ablations} == set(STUDY_IDS)


def test_open_clip_model_config_keys_are_open_clips():
    """The schema's list of open_clip model-config keys is open_clip's own (a new open_clip
    release that adds or renames fields fails here, not at a user's run)."""
    import dataclasses
    import inspect

    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    cfg = schema["$defs"]["clip_model"]["properties"]["cfg"]["properties"]
    assert set(cfg["vision_cfg"]["properties"]) == {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    assert set(cfg["text_cfg"]["properties"]) == {f.name for f in dataclasses.fields(CLIPTextCfg)}
    assert set(cfg) == set(inspect.signature(CLIP.__init__).parameters) - {"self", "output_dict"}


def test_schema_covers_every_study_and_the_harness_keys():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["studies"]["properties"]) == set(STUDY_IDS)
    harness = {"effective_batch", "batch_size", "grad_checkpointing", "bf16", "num_workers",
               "max_grad_norm"}
    d = schema["$defs"]
    blocks = [d["rankclip"]["properties"]["train"], d["pcclip"]["properties"]["finetune"],
              d["captioner"]["properties"]["train"],
              d["pairrank"]["properties"]["model"]["properties"]["train"],
              d["pairrank"]["properties"]["dpo"], d["mmalign"]["properties"]["sft"],
              d["mmalign"]["properties"]["train"]]
    for b in blocks:
        assert harness <= set(b["properties"]), b
        assert b["additionalProperties"] is False


def set_at(d, path, value):
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def errors_of(tmp_path, scale, study, changes):
    """The schema's error lines for an overlay making all `changes` (path → value) at once."""
    over = {}
    for p, v in changes.items():
        set_at(over, p, v)
    f = tmp_path / "my_overlay.yaml"
    f.write_text(yaml.safe_dump({"studies": {study: over}}))
    fs = files(scale) + [str(f)]
    return schema_errors(load(fs), fs), str(f)


def named(lines, key, f):
    """The error line naming `key` (exactly, as the dotted key at the start of a line)."""
    hits = [x for x in lines if x.startswith(key + ":")]
    assert hits, (key, lines)
    assert f"(set in {f})" in hits[0], hits[0]
    return hits[0]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("study", STUDY_IDS)
def test_unknown_key_at_every_level(tmp_path, scale, study):
    base = load(files(scale))["studies"][study]
    levels = [()] + [p for p, v in walk(base) if isinstance(v, dict)]
    assert len(levels) > 3
    lines, f = errors_of(tmp_path, scale, study, {p + ("lossy",): 1 for p in levels})
    for p in levels:
        key = ".".join(("studies", study) + p + ("lossy",))
        line = named(lines, key, f)
        if p[-1:] == ("captioners",):  # a map of names: `lossy` is a new captioner, not a mapping
            assert "1 is not of type 'object'" in line
        else:
            assert line.startswith(f"{key}: unknown key (set in {f}); known keys of"), line


def bad_type(p, v):
    if isinstance(v, bool) or isinstance(v, (int, float)):
        return "100"      # a quoted number
    if isinstance(v, str):
        return {"x": v}   # a mapping where one value belongs
    if v is None:
        return True       # a flag where a value or a block (or nothing) belongs
    return "one string"   # a string where a list belongs


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("study", STUDY_IDS)
def test_wrong_type_at_every_leaf(tmp_path, scale, study):
    base = load(files(scale))["studies"][study]
    leaves = {p: bad_type(p, v) for p, v in walk(base)
              if not isinstance(v, dict) and p[-1] != "ablations"}
    assert len(leaves) > 5
    lines, f = errors_of(tmp_path, scale, study, leaves)
    for p in leaves:
        named(lines, ".".join(("studies", study) + p), f)


# ablatable numbers: their range is the part's (mmablate.studies.spec Part.check), for the
# study's own value and every ablation's; the schema types them
STUDY_CHECKED = {"studies.mmalign.bdhs.gamma": "γ (bdhs.gamma) must be a number in [0, 1]",
                 "studies.mmalign.mixed_dpo.p": "p (mixed_dpo.p) must be a number in [0, 1]",
                 "studies.rankclip.loss.rank_weight": "rank_weight must be a finite number ≥ 0"}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("study", STUDY_IDS)
def test_negative_number_at_every_numeric_leaf(tmp_path, scale, study):
    """-1 is out of range for every number of every study (counts, sizes, rates, seeds,
    probabilities, weights); the ablatable γ, p and λ are their part's check."""
    base = load(files(scale))["studies"][study]
    nums = [p for p, v in walk(base) if not isinstance(v, bool) and isinstance(v, (int, float))]
    schema_keys = [p for p in nums if ".".join(("studies", study) + p) not in STUDY_CHECKED]
    assert len(schema_keys) > 3
    lines, f = errors_of(tmp_path, scale, study, {p: -1 for p in schema_keys})
    for p in schema_keys:
        assert "-1 is less than " in named(lines, ".".join(("studies", study) + p), f)
    if scale != "paper":  # the full checks need the paper scale's data on disk
        for p in set(nums) - set(schema_keys):
            f = overlay(tmp_path, study, p, -1)
            key = ".".join(("studies", study) + p)
            msg = refused(files(scale) + [f], key, full=True)
            assert f"{key}: {STUDY_CHECKED[key]}, got -1" in msg


def test_one_bad_key_names_the_files_and_the_key(tmp_path):
    f = overlay(tmp_path, "pcclip", ("captions", "captioners", "gpt", "size", "layers"), 0)
    msg = refused(files("smoke") + [f], "studies.pcclip.captions.captioners.gpt.size.layers: "
                                        f"0 is less than the minimum of 1 (set in {f})")
    assert msg.startswith(" + ".join(files("smoke") + [f]) + ": invalid config:")


ISSUE_OVERLAYS = [  # (overlay, the dotted key the error must name)
    ({"studies": {"pcclip": {"finetune": {"lossy": "hinge"}}}}, "studies.pcclip.finetune.lossy"),
    ({"studies": {"rankclip": {"trian": {"steps": 3}}}}, "studies.rankclip.trian"),
    ({"studies": {"rankclip": {"train": {"steps": "100"}}}}, "studies.rankclip.train.steps"),
    ({"studies": {"rankclip": {"train": {"batch_size": 0}}}}, "studies.rankclip.train.batch_size"),
    ({"studies": {"pairrank": {"dpo": {"effective_batch": 0}}}},
     "studies.pairrank.dpo.effective_batch"),
    ({"studies": {"mmalign": {"train": {"bf16": "yes"}}}}, "studies.mmalign.train.bf16"),
    ({"studies": {"pcclip": {"captions": {"captioners": {"gpt": {"train": {"lr": 0}}}}}}},
     "studies.pcclip.captions.captioners.gpt.train.lr"),
    ({"studies": {"pairrank": {"selection": {"top_fraction": 1.5}}}},
     "studies.pairrank.selection.top_fraction"),
    ({"studies": {"rankclip": {"train": {"num_workers": -1}}}}, "studies.rankclip.train.num_workers"),
    ({"studies": {"mmalign": {"train": {"max_grad_norm": 0}}}},
     "studies.mmalign.train.max_grad_norm"),
    ({"studies": {"mmalign": {"bdhs": {"rho_th": 1.5}}}}, "studies.mmalign.bdhs.rho_th"),
]


@pytest.mark.parametrize("study, key, block", [
    ("rankclip", "train", {"batch_size": 4, "effective_batch": 6}),
    ("pcclip", "captions.captioners.gpt.train", {"batch_size": 4, "effective_batch": 6}),
    ("pairrank", "dpo", {"batch_size": 4, "effective_batch": 6}),
    ("mmalign", "sft", {"batch_size": 4, "effective_batch": 6}),
])
def test_training_blocks_are_checked_across_keys_before_any_job(tmp_path, study, key, block):
    """The harness's check across keys (mmablate.training.harness.check) runs on every training
    block at config time, naming the file and the key."""
    f = overlay(tmp_path, study, tuple(key.split(".")), block)
    refused(files("smoke") + [f], f"studies.{study}.{key}.effective_batch: 6 is not a multiple "
                                  f"of ", full=True)


@pytest.mark.parametrize("scale", ["tiny", "smoke"])
@pytest.mark.parametrize("over, key", ISSUE_OVERLAYS)
def test_check_config_refuses_by_name(tmp_path, capsys, scale, over, key):
    from mmablate.cli import main

    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump(over))
    args = [str(p) for p in files(scale)] + [str(f)]
    assert main(["check-config", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + " + ".join(args)), err
    assert key in err and "Traceback" not in err


def _dry_run(tmp_path, over):
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump(over))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--cores", "1", "-q",
                           "--configfile", str(f)], cwd=REPO, capture_output=True, text=True,
                          timeout=300), str(f)


@pytest.mark.parametrize("over, key", [ISSUE_OVERLAYS[1], ISSUE_OVERLAYS[2]])
def test_snakemake_dry_run_refuses_by_name(tmp_path, over, key):
    r, f = _dry_run(tmp_path, over)
    assert r.returncode != 0
    assert f"error: config/config.yaml + {f}: invalid config:" in r.stderr, r.stderr
    assert key in r.stderr and "Traceback" not in r.stderr and 'File "' not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("over, key", ISSUE_OVERLAYS[:1] + ISSUE_OVERLAYS[3:])
def test_snakemake_dry_run_refuses_all(tmp_path, over, key):
    r, f = _dry_run(tmp_path, over)
    assert r.returncode != 0 and key in r.stderr and 'File "' not in r.stderr, r.stderr


def test_study_check_errors_also_leave_no_traceback(tmp_path):
    r, f = _dry_run(tmp_path, {"studies": {"rankclip": {"loss": {"decay": "quadratic"}}}})
    assert r.returncode != 0
    assert (f"error: config/config.yaml + {f}: studies.rankclip.loss.decay: unknown decay "
            "'quadratic'") in r.stderr
    assert 'File "' not in r.stderr


def test_error_names_only_the_overlay_that_sets_the_value(tmp_path):
    a = overlay(tmp_path, "rankclip", ("train", "steps"), 10, "a.yaml")
    b = overlay(tmp_path, "rankclip", ("train", "steps"), "ten", "b.yaml")
    msg = refused(files("tiny") + [a, b], f"studies.rankclip.train.steps: 'ten' is not of type "
                                          f"'integer', 'null' (set in {b})")  # null: epochs
    assert f"(set in {a}" not in msg


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("studies:\n  rankclip: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(line \d+\)"):
        load([REPO / "config/config.yaml", f])


def test_schema_is_checked_once_per_pipeline(monkeypatch, smoke_config):
    import mmablate.pipeline as pl

    calls = []
    real = pl.schema_errors
    monkeypatch.setattr(pl, "schema_errors", lambda *a: calls.append(1) or real(*a))
    Pipeline(copy.deepcopy(smoke_config), ["smoke"], write=False)
    assert len(calls) == 1
