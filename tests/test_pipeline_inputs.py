"""Stages name their upstream jobs by stage and hash (mmablate.pipeline.Ref); one input function
(`Pipeline.inputs`, the rules' `upstream`) turns them into files. Checked: every path a stage
config carries into another job's output directory is one of its named inputs, and every named
input is a job of the DAG."""
import copy

import pytest

from .conftest import REPO
from mmablate.config import load
from mmablate.pipeline import SEED, Pipeline, Ref, stage_outputs


def strings(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from strings(v)
    elif isinstance(x, str):
        yield x


def owner(P, path):
    """(stage, hash, seed or None) of the job whose output directory holds `path`."""
    import re

    for stage in stage_outputs():
        job = P.job_at(stage, path)
        if job:
            rest = path[len(job.dir):]
            m = re.match(r"/s(\d+)(/|$)", rest)
            return stage, job.hash, int(m.group(1)) if m and "{seed}" in stage_outputs()[stage] \
                else None
    return None


@pytest.fixture(params=["tiny", "smoke"])
def pipeline(request):
    files = [REPO / "config/config.yaml"] + (
        [REPO / "config/scales/smoke.yaml"] if request.param == "smoke" else [])
    return Pipeline(load(files), [str(f) for f in files], write=False)


def test_every_upstream_path_is_a_named_input(pipeline):
    P = pipeline
    n = 0
    for stage, by_hash in P.stages.items():
        for h, cfg in by_hash.items():
            refs = [r for rs in P.needs.get(stage, {}).get(h, {}).values() for r in rs]
            named = {(r.stage, r.h) for r in refs}
            for s in strings(cfg):
                o = owner(P, s)
                if o is None or (o[0], o[1]) == (stage, h):
                    continue
                n += 1
                assert (o[0], o[1]) in named, f"{stage} {h}: reads {s} but names no {o[0]} input"
                r = next(r for r in refs if (r.stage, r.h) == o[:2])
                if o[2] is not None:  # a seeded output: that seed, or the job's own
                    assert r.seed in (o[2], SEED), (stage, s, r)
    assert n > 20


def test_every_named_input_is_a_job_and_resolves(pipeline):
    P = pipeline
    for stage, by_hash in P.needs.items():
        for h, needs in by_hash.items():
            for name, refs in needs.items():
                for r in refs:
                    assert isinstance(r, Ref) and r.h in P.stages[r.stage], (stage, h, name, r)
            seed = 0 if "{seed}" in stage_outputs()[stage] else None
            files = P.inputs(stage, h, seed)
            for paths in files.values():
                for f in paths:
                    assert P.job_of(f) is not None, f


def test_inputs_by_seed(pipeline):
    """A per-seed job reads the same seed of its per-seed upstream (the base model of seed s)."""
    P = pipeline
    h = next(iter(P.stages["rankclip_eval"]))
    th = P.stages["rankclip_eval"][h]["train"]
    assert P.inputs("rankclip_eval", h, 1)["model"] == [P.output("rankclip_train", th, 1)]
    fh, cfg = next((k, c) for k, c in P.stages["pcclip_finetune"].items() if c["embed"])
    got = P.inputs("pcclip_finetune", fh, 2)
    assert got["embed"] == [P.output("pcclip_embed", cfg["embed"], 2)]
    assert got["base"] == [P.output("rankclip_train", cfg["base"]["hash"], 2)]
    assert got["captions"] == [P.output("pcclip_captions", cfg["captions"])]


def test_same_config_must_name_the_same_upstream(smoke_config):
    P = Pipeline(copy.deepcopy(smoke_config), ["smoke"], write=False)
    w = P.add_stage("world", P.config["world"], needs={})
    with pytest.raises(RuntimeError, match="two different upstream sets"):
        P.add_stage("world", P.config["world"], needs={"x": w.ref()})
