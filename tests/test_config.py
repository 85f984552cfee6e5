import copy
import json

import pytest

from mmablate.errors import ConfigError
from mmablate.pipeline import Pipeline, validate
from mmablate.util import canonical, config_hash


RANKCLIP_ABLATIONS = [
    {"id": "rank_weight", "key": "loss.rank_weight", "values": [0.0, 0.03125, 0.0625, 0.125, 0.25],
     "metrics": ["zeroshot_top1", "zeroshot_top3", "zeroshot_top5"]},
    {"id": "decay", "key": "loss.decay",
     "values": ["constant", "inv_k", "inv_k_plus_1", "exp_neg_k", "inv_log_k_plus_1"],
     "metrics": ["zeroshot_top1", "zeroshot_top3", "zeroshot_top5"]},
]


def only(cfg, study="rankclip"):
    for s in cfg["studies"]:
        cfg["studies"][s]["enabled"] = s == study
    return cfg


@pytest.fixture
def explicit(smoke_config):
    """The smoke config with RankCLIP's ablations written out (as a user may, overriding plans)."""
    cfg = only(copy.deepcopy(smoke_config))
    cfg["studies"]["rankclip"]["ablations"] = copy.deepcopy(RANKCLIP_ABLATIONS)
    return cfg


def test_default_and_overlays_validate(smoke_config):
    P = Pipeline(only(smoke_config), ["smoke"], write=False)
    names = [a.name for a in P.ablations]
    assert names == ["rankclip__rank_weight", "rankclip__decay"]


def test_shared_baseline_runs_once(smoke_config):
    P = Pipeline(only(smoke_config), ["smoke"], write=False)
    # 5 weights + 5 decays, the baseline (λ=1/16, µ=1/log(k+1)) shared by both ablations
    assert len(P.stages["rankclip_train"]) == 9
    rw, dec = P.ablations
    base_rw = [r for r in rw.rows if r.is_baseline]
    base_dec = [r for r in dec.rows if r.is_baseline]
    assert len(base_rw) == len(base_dec) == 1
    assert base_rw[0].config_hash == base_dec[0].config_hash
    assert base_rw[0].evals == base_dec[0].evals


def test_lambda_zero_ignores_decay(explicit):
    cfg = explicit
    ab = cfg["studies"]["rankclip"]["ablations"]
    ab.append({"id": "other", "key": "loss.rank_weight", "values": [0.0],
               "metrics": ["zeroshot_top1"]})
    cfg["studies"]["rankclip"]["loss"]["decay"] = "constant"  # λ=0 rows must still dedupe
    P = Pipeline(cfg, ["x"], write=False)
    zero = [r for a in P.ablations for r in a.rows if r.value == 0.0]
    assert len({r.config_hash for r in zero}) == 1


def test_hash_ignores_key_order():
    a = {"x": 1, "y": {"b": 2, "a": 3}}
    b = {"y": {"a": 3, "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["studies"]["rankclip"]["ablations"][1]["values"].append("quadratic"),
     r"studies.rankclip.ablations\[1\].values\[5\]: unknown decay 'quadratic'"),
    (lambda c: c["studies"]["rankclip"]["ablations"][0]["values"].append(-0.5),
     r"studies.rankclip.ablations\[0\].values\[5\]: rank_weight must be a finite number ≥ 0"),
    (lambda c: c["studies"]["rankclip"]["ablations"][0].update(key="loss.rank_wieght"),
     r"ablations\[0\].key: 'loss.rank_wieght' is not a key of studies.rankclip"),
    (lambda c: c["studies"]["rankclip"]["ablations"][0].update(metrics=["top7"]),
     r"unknown metric 'top7'"),
    (lambda c: c["studies"]["rankclip"]["ablations"][0].update(valuez=[1]),
     r"studies.rankclip.ablations\[0\].valuez: unknown key"),
    (lambda c: c.update(seeds=0), r"seeds: 0 is less than the minimum of 1"),
    (lambda c: c["studies"]["rankclip"]["loss"].update(decay="nope"),
     r"studies.rankclip.loss.decay: unknown decay 'nope'"),
    (lambda c: c["studies"]["rankclip"]["data"].update(source="files", root="/no/such/cc3m"),
     r"studies.rankclip.data.root: '/no/such/cc3m' is not a directory"),
    (lambda c: c["studies"]["rankclip"]["ablations"][0].update(key="train.lr"),
     r"'train.lr' cannot be ablated"),
    (lambda c: c["studies"]["rankclip"]["train"].update(warmup=10**6),
     r"studies.rankclip.train.warmup: 1000000 must be below train.steps"),
])
def test_bad_config_names_file_and_key(explicit, mutate, message):
    cfg = explicit
    mutate(cfg)
    with pytest.raises(ConfigError, match=message) as e:
        validate(cfg, ["config/config.yaml", "my_overlay.yaml"])
    assert "config/config.yaml + my_overlay.yaml" in str(e.value)


def test_stage_configs_written_only_when_changed(smoke_config, tmp_path):
    Pipeline(only(smoke_config), ["x"], results=str(tmp_path))
    f = next((tmp_path / "configs" / "rankclip_train").iterdir())
    json.loads(f.read_text())
    before = f.stat().st_mtime_ns
    Pipeline(only(smoke_config), ["x"], results=str(tmp_path))
    assert f.stat().st_mtime_ns == before


def test_check_config_cli(capsys):
    from mmablate.cli import main

    assert main(["check-config", "config/config.yaml", "config/scales/smoke.yaml"]) == 0
    out = capsys.readouterr().out
    assert "rankclip__decay" in out and "baseline" in out
