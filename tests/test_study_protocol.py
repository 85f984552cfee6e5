"""The one study protocol (mmablate.studies.protocol), Part.check and jobs as objects
(mmablate.pipeline.Job)."""
import copy

import pytest
import yaml

from .conftest import REPO, STUDY_IDS
from mmablate.pipeline import Job, Pipeline, Ref, SEED, study_of
from mmablate.studies.protocol import StudyPipeline
from mmablate.studies.spec import STUDY_SPECS, Part, Value


@pytest.mark.parametrize("study", STUDY_IDS)
def test_every_study_implements_the_protocol(study):
    s = study_of(study)
    assert isinstance(s, StudyPipeline) and s.spec is STUDY_SPECS[study] and s.id == study


def test_a_study_must_implement_variant():
    class Half(StudyPipeline):
        spec = STUDY_SPECS["rankclip"]

    with pytest.raises(TypeError, match="variant"):
        Half()


def test_part_check_choice_and_number():
    c = Part("c", "a.colour", "", (), values={"red": Value("Red"), "blue": Value("Blue")})
    c.check("red")
    with pytest.raises(ValueError, match=r"unknown colour 'green'; known: \['blue', 'red'\]"):
        c.check("green")
    with pytest.raises(ValueError, match=r"unknown colour \['red'\]"):
        c.check(["red"])  # unhashable: refused, not a TypeError
    n = Part("n", "a.w", "", (), lo=0.0, hi=1.0, symbol="ω (a.w)")
    for ok in (0, 0.5, 1):
        n.check(ok)
    for bad in (-0.1, 1.5, float("nan"), True, "0.5", None):
        with pytest.raises(ValueError, match=r"ω \(a\.w\) must be a number in \[0, 1\], got"):
            n.check(bad)
    with pytest.raises(ValueError, match=r"w must be a finite number ≥ 0, got inf"):
        Part("n", "a.w", "", (), lo=0.0).check(float("inf"))


def test_ablatable_keys_are_typed_by_the_schema_and_ranged_by_their_part():
    """One range per ablatable part: the schema types the key and describes it; the part's
    values or range are Part.check's alone (no minimum/maximum/enum repeated in the schema)."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    for study, spec in STUDY_SPECS.items():
        for p in spec.parts:
            node = schema["$defs"][study]
            for k in p.key.split("."):
                node = node["properties"][k]
            assert "type" in node and node.get("description"), (study, p.key, node)
            assert not {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum",
                        "$ref"} & set(node), (study, p.key, node)


def test_add_stage_returns_a_job(smoke_config):
    P = Pipeline(copy.deepcopy(smoke_config), ["smoke"], write=False)
    w = P.world(P.config["world"])
    assert isinstance(w, Job) and w.hash in P.stages["world"]
    assert w.dir == f"{P.results}/world/{w.hash}"
    assert w.output() == f"{w.dir}/summary.json" and w.ref() == Ref("world", w.hash)
    with pytest.raises(ValueError, match="seed"):
        w.output(0)
    (h, cfg), *_ = P.stages["rankclip_train"].items()
    t = P.job("rankclip_train", h)
    assert t.output(2) == f"{t.dir}/s2/model.pt" and t.ref(SEED) == Ref("rankclip_train", h, SEED)
    assert P.job_at("rankclip_train", f"{t.dir}/s2/model.pt") == t
    assert P.job_at("rankclip_train", t.dir) == t and P.job_at("rankclip_train", t.dir + "x") is None
    assert P.job_at("world", cfg["data"]["root"]) == w  # the CLIP trained on the shared world
    with pytest.raises(AttributeError):
        t.hash = "0"  # frozen


def test_every_config_key_has_a_description():
    """Each key of the schema says what it is (`description:`), except the open_clip
    model-config fields under clip_model.cfg (open_clip's own, described there)."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and not path.endswith(".cfg"):
                for k, v in props.items():
                    if isinstance(v, dict) and not v.get("description"):
                        missing.append(f"{path}.{k}")
            for k, v in node.items():
                if isinstance(v, (dict, list)) and not (path.endswith(".cfg") and k == "properties"):
                    walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    walk(schema, "")
    assert missing == []
