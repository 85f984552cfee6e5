"""Plans as the pipeline's input: round trip with the default config, the rules for adding,
overriding and conflicting plans, `plan check` exit codes, and a plan dropped into a workflow."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, copy_workflow, only_study
from mmablate.errors import ConfigError
from mmablate.pipeline import Pipeline
from .test_plans_parse import EXPECTED, PLANS

NEW_PLAN = """<div class="trajectory-box">
# lm-planner/handwritten/RANKCLIP__Ranking_Consistent_Language_Image_Pretraining

### Ablation: a larger ranking weight
- **Ablated Part**: Ranking Consistency Loss weight factors (Î»)
- **Action**: REPLACE
- **Replacement**:
  - 0.5
- **Metrics**: Zero-shot Top-1 Accuracy, Zero-shot Top-5 Accuracy
</div>
"""


def default_config():
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_default_config_round_trip():
    """One source of truth: the default config lists no ablations; its effective ablations are
    exactly what the five plans parse to, study by study (pcclip = 001's then 002's)."""
    cfg = default_config()
    P = Pipeline(cfg, ["config/config.yaml"], write=False)
    ps = P.planset
    want = {}
    for num in sorted(EXPECTED):
        study, abls = EXPECTED[num]
        want.setdefault(study, []).extend(
            {"id": i, "key": k, "values": v, "metrics": m} for i, k, v, m in abls)
    got = {s: [{k: a[k] for k in ("id", "key", "values", "metrics")} for a in abls]
           for s, abls in ps.by_study.items()}
    assert got == want
    assert [a["id"] for a in ps.by_study["pcclip"]] == ["encoders", "combine", "captioner", "loss"]
    for study, scfg in cfg["studies"].items():
        assert "ablations" not in scfg, f"studies.{study} must take its ablations from its plans"
        assert P.study_ablations[study] == ps.by_study[study]
        prefixes = "+".join(Path(f).name.split("_")[0] for f in ps.sources[study])
        assert scfg["plan"] == prefixes
    assert {s: "+".join(Path(f).name.split("_")[0] for f in fs) for s, fs in ps.sources.items()} \
        == {"pairrank": "000", "pcclip": "001+002", "rankclip": "003", "mmalign": "004"}
    # the rankclip rows: baseline (the config's own value) marked, values in plan order
    ab = P.ablation("rankclip__rank_weight")
    assert [r.value for r in ab.rows] == [0.0, 0.03125, 0.0625, 0.125, 0.25]
    assert [r.is_baseline for r in ab.rows] == [False, False, True, False, False]
    assert ab.part.startswith("Ranking Consistency Loss weight factors (λ")


def test_explicit_ablations_override_plans():
    cfg = only_study(default_config(), "rankclip")
    cfg["studies"]["rankclip"]["ablations"] = [
        {"id": "rank_weight", "key": "loss.rank_weight", "values": [0.5],
         "metrics": ["zeroshot_top1"]}]
    P = Pipeline(cfg, ["overlay.yaml"], write=False)
    assert [a.name for a in P.ablations] == ["rankclip__rank_weight"]
    assert [r.value for r in P.ablations[0].rows] == [0.0625, 0.5]
    assert any("overrides the plans" in n and "003_" in n for n in P.notes)


def test_new_plan_adds_and_a_second_plan_on_the_part_is_a_follow_up(tmp_path):
    d = tmp_path / "plans"
    d.mkdir()
    (d / "010_bigger_weight.md").write_text(NEW_PLAN, encoding="utf-8")
    cfg = only_study(default_config(), "rankclip")
    cfg["plans_dir"] = str(d)
    P = Pipeline(cfg, ["config/config.yaml"], write=False)
    assert [(a.name, [r.value for r in a.rows]) for a in P.ablations] == \
        [("rankclip__rank_weight", [0.0625, 0.5])]
    assert P.ablations[0].metrics == ["zeroshot_top1", "zeroshot_top5"]
    # an earlier plan on the same part: 010's ablation becomes its own table beside 003's
    shutil.copy(plan_file := next(PLANS.glob("003_*.txt")), d / plan_file.name)
    P = Pipeline(cfg, ["config/config.yaml"], write=False)
    assert [a.name for a in P.ablations] == ["rankclip__rank_weight", "rankclip__decay",
                                             "rankclip__rank_weight_p010"]
    first, _, follow = P.ablations
    assert [r.value for r in follow.rows] == [0.0625, 0.5]
    assert follow.rows[0].config_hash == first.rows[2].config_hash  # the shared baseline: one job
    assert P.planset.followups == {("rankclip", "rank_weight_p010"): str(d / plan_file.name)}
    # one plan ablating the same part twice is still an error naming both lines
    two = NEW_PLAN.replace("</div>", NEW_PLAN.split("\n", 2)[2].replace("</div>", "") + "</div>")
    (d / "010_bigger_weight.md").write_text(two, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        Pipeline(cfg, ["config/config.yaml"], write=False)
    assert "010_bigger_weight.md:12: part rank_weight (loss.rank_weight) is already ablated at " \
           "line 5" in str(e.value)


def test_bad_plan_stops_the_pipeline(tmp_path):
    d = tmp_path / "plans"
    d.mkdir()
    shutil.copy(REPO / "tests/data/plans/bad_value.md", d)
    cfg = default_config()
    cfg["plans_dir"] = str(d)
    with pytest.raises(ConfigError, match=r"bad_value.md:8: decay \(loss.decay\)"):
        Pipeline(cfg, ["config/config.yaml"], write=False)


def test_enabled_study_without_ablations(tmp_path):
    cfg = default_config()
    cfg["plans_dir"] = str(tmp_path)  # empty
    with pytest.raises(ConfigError, match="studies.rankclip: enabled but has no ablations"):
        Pipeline(cfg, ["config/config.yaml"], write=False)


def _cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("MMABLATE_FORKSERVER", None)
    r = subprocess.run([sys.executable, "-m", "mmablate", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    return r


def test_plan_check_is_light():
    """`plan check` reads plans and the config only: no torch, no numpy (it starts in well under
    a second; measured, not asserted: timed assertions depend on the machine's load)."""
    code = ("import sys; from mmablate.cli import main; main(['plan', 'check', sys.argv[1]]); "
            "print(sorted(m for m in ('torch', 'numpy', 'open_clip') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(next(PLANS.glob("003_*.txt")))], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_plan_check_exit_codes():
    r = _cli("plan", "check", str(next(PLANS.glob("003_*.txt"))))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "study:  rankclip" in out and "key:     loss.decay" in out
    assert "values:  0.0 (line 27), 0.03125 (line 28)" in out
    assert "inv_log_k_plus_1 (line 42)" in out and "metrics: zeroshot_top1" in out
    assert "baseline a" in out or "baseline" in out
    assert "dedupes with rankclip__decay: 1/log(k+1)" in out
    assert "rankclip_train ×8" in out
    r = _cli("plan", "check", str(next(PLANS.glob("001_*.txt"))))
    assert r.returncode == 0 and "finetune.combine" in r.stdout, r.stderr
    for bad, line in (("bad_unknown_part.md", 4), ("bad_value.md", 8),
                      ("bad_missing_replacement.md", 12), ("bad_unknown_study.md", 1)):
        r = _cli("plan", "check", f"tests/data/plans/{bad}")
        assert r.returncode == 1, bad
        assert f"{bad}:{line}:" in r.stderr and "nothing will run" in r.stderr


def test_plan_check_follow_up_and_show(tmp_path):
    f = tmp_path / "mine.md"
    f.write_text(NEW_PLAN, encoding="utf-8")
    r = _cli("plan", "check", str(f))  # a follow-up on config/plans/003's part
    assert r.returncode == 0, r.stderr
    assert "follow-up: rankclip__rank_weight_pmine is its own table, beside the one of 003_" \
        in r.stdout
    assert "rankclip_train ×1, rankclip_eval ×1" in r.stdout
    r = _cli("plan", "show", str(next(PLANS.glob("004_*.txt"))))
    assert r.returncode == 0
    shown = yaml.safe_load(r.stdout)["studies"]["mmalign"]["ablations"]
    assert [a["id"] for a in shown] == ["gamma", "mix_p"] and shown[1]["key"] == "mixed_dpo.p"


def test_dropped_plan_reaches_the_dag(tmp_path):
    """A user drops a plan into config/plans/ of a workflow: snakemake plans its tables."""
    wf = copy_workflow(tmp_path)
    for f in (wf / "config/plans").glob("003_*"):
        f.unlink()
    (wf / "config/plans/010_bigger_weight.md").write_text(NEW_PLAN, encoding="utf-8")
    r = subprocess.run(["snakemake", "-n", "--cores", "1", "all",
                        "--configfile", "config/config.yaml", "config/scales/smoke.yaml"],
                       cwd=wf, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "results/tables/rankclip__rank_weight.md" in r.stdout
    assert "rankclip__decay" not in r.stdout
    ab = json.loads((wf / "results/configs/ablation/rankclip__rank_weight.json").read_text())
    assert [row["value"] for row in ab["rows"]] == [0.0625, 0.5]
    # a plan that does not check: snakemake stops at parse time, naming file and line
    shutil.copy(REPO / "tests/data/plans/bad_value.md", wf / "config/plans/011_bad.md")
    r = subprocess.run(["snakemake", "-n", "--cores", "1", "all"], cwd=wf, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "011_bad.md:8:" in r.stdout + r.stderr


@pytest.mark.slow
def test_dropped_plan_runs_end_to_end(tmp_path):
    """Drop a plan in, run `snakemake all` (smoke scale): its table and figure are produced."""
    wf = copy_workflow(tmp_path)
    for f in (wf / "config/plans").glob("003_*"):
        f.unlink()
    (wf / "config/plans/010_bigger_weight.md").write_text(NEW_PLAN, encoding="utf-8")
    cfg = yaml.safe_load((wf / "config/config.yaml").read_text())
    (wf / "only.yaml").write_text(yaml.safe_dump(
        {"studies": {s: {"enabled": s == "rankclip"} for s in cfg["studies"]}}))
    r = subprocess.run(["snakemake", "--cores", "2", "all", "--configfile", "config/config.yaml",
                        "config/scales/smoke.yaml", "only.yaml"], cwd=wf, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (wf / "results/tables/rankclip__rank_weight.md").read_text()
    assert "0.5" in table and "0.0625" in table and "Top-5" in table and "Top-3" not in table
    assert (wf / "results/figures/rankclip__rank_weight.png").is_file()
    assert not (wf / "results/tables/rankclip__decay.md").exists()
