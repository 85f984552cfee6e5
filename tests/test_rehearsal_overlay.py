"""config/scales/rehearsal.yaml overrides only what the rehearsal may change (paths, model sizes,
budgets, batch sizes, worker counts: mmablate.rehearsal.overlay.ALLOWED), and its top level:
its own results root, two ranks per training job, tables that say it is a rehearsal."""
import copy
import json

import pytest
import yaml

from mmablate.config import load
from mmablate.errors import ConfigError
from mmablate.pipeline import REPO, Pipeline, validate_schema
from mmablate.rehearsal.overlay import category, check, check_files, overrides

PAPER = [REPO / "config/config.yaml", REPO / "config/scales/paper.yaml"]
OVERLAY = REPO / "config/scales/rehearsal.yaml"


@pytest.fixture(scope="module")
def paper():
    return load(PAPER)


def test_rehearsal_overlay_overrides_only_allowed_keys(paper):
    got = check_files(OVERLAY, PAPER)  # raises, naming the keys, on any other override
    keys = {k for k, _ in got}
    # its own top level
    assert {"results", "rehearsal", "gpus"} <= keys
    ov = yaml.safe_load(OVERLAY.read_text())
    assert ov["gpus"] == 2 and ov["rehearsal"] is True
    assert ov["results"] != "results" and not ov["results"].startswith("results/")
    for k in ("seeds", "scale"):  # as paper.yaml has them (checked by the allow-list too)
        assert k not in ov


@pytest.mark.parametrize("bad", [
    {"studies": {"rankclip": {"data": {"cache": True}}}},
    {"studies": {"rankclip": {"data": {"source": "world"}}}},
    {"studies": {"mmalign": {"eval": {"jobs": "per_model"}}}},
    {"studies": {"pcclip": {"pairs": {"seed": 3}}}},
    {"seeds": 1},
    {"scale": "tiny"},
    {"studies": {"pairrank": {"enabled": False}}},
    {"studies": {"pairrank": {"dpo": {"lr_schedule": "cosine"}}}},
    {"studies": {"mmalign": {"model": {"lora": {"target_modules": "q_proj"}}}}},
    {"studies": {"pairrank": {"rewards": {"precision": "fp32"}}}},
    {"studies": {"rankclip": {"model": {"tokenizer": "world"}}}},
    {"preflight": False},
])
def test_a_code_path_override_is_refused(paper, bad):
    with pytest.raises(ConfigError, match="may override only paths") as e:
        check(bad, paper, "r.yaml")
    leaf = next(iter(_leaves(bad)))
    assert f"r.yaml" in str(e.value) and leaf in str(e.value)


def _leaves(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _leaves(v, key)
        else:
            yield key


def test_allowed_categories(paper):
    ov = {"results": "rehearsal/results", "threads": 1,
          "studies": {
              "rankclip": {"data": {"root": "rehearsal/assets/cc3m",
                                    "train_shards": "{00000..00003}.tar", "num_workers": 1},
                           "model": {"arch": "RN50-mini",
                                     "cfg": {"embed_dim": 16, "vision_cfg": {"width": 8}}},
                           "train": {"epochs": 1, "batch_size": 8, "warmup": 2}},
              "pairrank": {"dpo": {"effective_batch": 8, "lora_rank": 4, "steps": 4},
                           "eval": {"sampling": {"steps": 2, "batch": 2}}},
              "mmalign": {"model": {"base": "rehearsal/assets/models/llava-next",
                                    "lora": {"r": 4, "alpha": 8}},
                          "judge": {"rank": {"endpoint": "http://127.0.0.1:18765/v1"},
                                    "bench": {"endpoint": "http://127.0.0.1:18765/v1"}},
                          "eval": {"benchmarks": {"pope": {"files": {
                              "random": "rehearsal/assets/pope/coco_pope_random.json"}}}}},
          }}
    cats = dict(overrides(ov, paper))
    assert cats["studies.rankclip.model.cfg.vision_cfg.width"] == "model size"  # cfg: null before
    assert cats["studies.rankclip.data.root"] == "path"
    assert cats["studies.mmalign.eval.benchmarks.pope.files.random"] == "path"
    assert cats["studies.rankclip.train.epochs"] == "budget"
    assert cats["studies.pairrank.dpo.effective_batch"] == "batch size"
    assert cats["threads"] == "worker count"
    assert None not in cats.values()
    check(ov, paper)


def test_an_equal_value_is_no_override(paper):
    same = {"seeds": paper["seeds"], "studies": {"rankclip": {"data": {"cache": False}}}}
    assert overrides(same, paper) == []
    assert category("studies.rankclip.data.cache") is None
    assert category("studies.x.train.num_workers") == "worker count"


def test_schema_takes_the_top_level_keys(paper):
    cfg = copy.deepcopy(paper)
    cfg.update({"results": "rehearsal/results", "rehearsal": True, "preflight": "false"})
    validate_schema(cfg, ["c.yaml"])
    for k, v in (("results", "r/{h}"), ("rehearsal", "yes"), ("preflight", "maybe")):
        with pytest.raises(ConfigError, match=k):
            validate_schema({**cfg, k: v}, ["c.yaml"])


def test_results_root_and_rehearsal_caption(smoke_config, tmp_path):
    """The results root comes from the config; `rehearsal: true` makes every ablation's scale
    "rehearsal" and every table and figure say what the numbers are."""
    import pandas as pd

    from mmablate.report.collect import collect
    from mmablate.report.figures import make_figure
    from mmablate.report.summary import REHEARSAL_NOTE
    from mmablate.report.tables import make_tables

    cfg = copy.deepcopy(smoke_config)
    for s in cfg["studies"]:
        cfg["studies"][s]["enabled"] = s == "rankclip"
    root = tmp_path / "rehearsal-results"
    assert Pipeline(copy.deepcopy(cfg), ["smoke"], write=False).results == "results"
    P0 = Pipeline({**cfg, "results": str(root)}, ["smoke"], write=False)
    P = Pipeline({**cfg, "results": str(root), "rehearsal": True}, ["smoke"])
    assert P.results == str(root)
    assert all(t.startswith(str(root) + "/") for t in P.targets())
    # the same jobs (stage configs and hashes) as without the flag: no stage reads it
    assert P.stages == P0.stages
    ab = P.ablations[0]
    abc = json.loads((root / f"configs/ablation/{ab.name}.json").read_text())
    assert abc["scale"] == "rehearsal"
    assert P0.ablation_config(ab)["scale"] == "smoke"
    for row in abc["rows"]:  # stand-in metrics for each (variant, seed)
        for seed, path in row["evals"].items():
            p = tmp_path / "evals" / f"{row['config_hash']}_{seed}.json"
            p.parent.mkdir(exist_ok=True)
            p.write_text(json.dumps({"metrics": {m["id"]: 1.0 + int(seed) for m in abc["metrics"]}}))
            row["evals"][seed] = str(p)
    (tmp_path / "ab.json").write_text(json.dumps(abc))
    collect(tmp_path / "ab.json", tmp_path / "m.csv")
    assert set(pd.read_csv(tmp_path / "m.csv")["scale"]) == {"rehearsal"}
    make_tables(tmp_path / "ab.json", tmp_path / "m.csv", tmp_path / "t.md", tmp_path / "t.tex",
                tmp_path / "t.csv")
    md = (tmp_path / "t.md").read_text()
    assert "Scale: rehearsal" in md and REHEARSAL_NOTE in md
    assert "numbers mean nothing" in (tmp_path / "t.tex").read_text()
    assert set(pd.read_csv(tmp_path / "t.csv")["scale"]) == {"rehearsal"}
    make_figure(tmp_path / "ab.json", tmp_path / "m.csv", tmp_path / "f.png", tmp_path / "f.pdf")
    assert (tmp_path / "f.png").stat().st_size > 0
