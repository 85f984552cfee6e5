"""One description per study (mmablate.studies.spec): the plan registry, each study's pipeline
facts, the list of studies and the stage outputs cannot disagree with it (the rules' outputs are
`Pipeline.output_pattern`: tests/test_rules_from_python.py)."""
import pytest

from .conftest import REPO, STUDY_IDS
from mmablate.pipeline import STUDIES, Pipeline, stage_outputs, study_of
from mmablate.plans.registry import REGISTRY
from mmablate.plans.values import Choice, Number
from mmablate.studies.spec import STUDY_SPECS


def test_one_list_of_studies():
    assert STUDY_IDS == tuple(STUDY_SPECS) == tuple(REGISTRY)
    assert STUDIES == STUDY_IDS


@pytest.mark.parametrize("study", STUDY_IDS)
def test_registry_is_derived_from_the_description(study):
    d, r = STUDY_SPECS[study], REGISTRY[study]
    assert r.title == d.title
    assert [(p.id, p.key) for p in r.parts] == [(p.id, p.key) for p in d.parts]
    for p in d.parts:
        v = r.part(p.id).values
        if p.is_number:
            assert isinstance(v, Number) and (v.lo, v.hi) == (p.lo, p.hi)
        else:  # the plan's options are exactly the labelled values
            assert isinstance(v, Choice) and list(v.options) == list(p.values)
    assert set(r.metrics) <= {m.id for m in d.metrics}


@pytest.mark.parametrize("study", STUDY_IDS)
def test_study_pipeline_facts_are_the_description(study):
    d, mod = STUDY_SPECS[study], study_of(study)
    assert mod.TITLE == d.caption
    assert mod.ABLATABLE == {p.key: p.description for p in d.parts}
    assert mod.METRICS == {m.id: {"label": m.label, "unit": m.unit,
                                  "higher_is_better": m.higher_is_better} for m in d.metrics}
    for p in d.parts:  # the study accepts each described value and labels it as described
        for v, o in p.values.items():
            mod.check_value(p.key, v)
            assert mod.label(p.key, v).startswith(o.label)
        if p.values:
            with pytest.raises(ValueError):
                mod.check_value(p.key, "no_such_value")


def test_rankclip_decays_are_the_losses():
    from mmablate.studies.rankclip.losses import DECAYS

    assert set(DECAYS) == set(STUDY_SPECS["rankclip"].part("decay").values)


def test_pcclip_template_captioner_is_plannable():
    """The `template` captioner the config defines is a value plans can ask for."""
    ch = REGISTRY["pcclip"].part("captioner").values
    assert ch.parse("template (ground truth captions)") == "template"
    assert ch.parse("LLaMA-2-13B-chat") == "llama2_chat"


def test_stage_outputs_round_trip(smoke_config):
    P = Pipeline(smoke_config, ["smoke"], write=False)
    for stage, by_hash in P.stages.items():
        if stage not in stage_outputs():
            continue
        for h in by_hash:
            seed = 1 if "{seed}" in stage_outputs()[stage] else None
            assert P.job_of(P.output(stage, h, seed)) == (stage, h, seed)
