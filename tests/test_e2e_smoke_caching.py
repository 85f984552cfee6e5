"""End to end at smoke scale through snakemake: outputs, and that only what changed reruns."""
import re
import subprocess

import pandas as pd
import pytest
import yaml

from .conftest import REPO, copy_workflow, with_ablations

pytestmark = pytest.mark.slow


def snakemake(wd, *args, check=True):
    cmd = ["snakemake", *args, "--cores", "2", "--configfile", "config/scales/smoke.yaml",
           "overlay.yaml"]
    p = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def planned(wd) -> dict:
    """Job counts per rule of a dry run."""
    out = snakemake(wd, "-n").stdout
    if "Nothing to be done" in out:
        return {}
    stats = out[out.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)
            if m.group(1) != "total"}


def planned_outputs(wd) -> str:
    return snakemake(wd, "-n").stdout


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("wf"))
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    overlay = {"studies": {s: {"enabled": s == "rankclip"} for s in cfg["studies"]}}
    (wd / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    snakemake(wd, "all")
    return wd


def test_outputs(done):
    df = pd.read_csv(done / "results/metrics.csv")
    assert list(df.columns) == ["study", "ablation", "variant", "is_baseline", "seed", "metric",
                                "value", "chance", "scale", "config_hash"]
    # 5 + 5 rows (the shared baseline appears under both ablations) × 2 seeds × 3 metrics
    assert len(df) == 10 * 2 * 3
    assert set(df["scale"]) == {"smoke"}
    for ab in ("rank_weight", "decay"):
        for ext in ("md", "tex", "csv"):
            assert (done / f"results/tables/rankclip__{ab}.{ext}").is_file()
        assert (done / f"results/figures/rankclip__{ab}.png").is_file()
    md = (done / "results/tables/rankclip__decay.md").read_text()
    assert "Scale: smoke" in md and "1/log(k+1) †" in md
    assert (done / "logs/world").is_dir() and any((done / "results/benchmarks").rglob("*.tsv"))


def test_a_complete_run_has_nothing_to_do(done):
    assert planned(done) == {}


def test_changing_one_value_reruns_that_variant_and_its_tables(done):
    cfg = yaml.safe_load((done / "overlay.yaml").read_text())
    base = with_ablations(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    abl = base["studies"]["rankclip"]["ablations"]
    abl[0]["values"] = [0.5 if v == 0.25 else v for v in abl[0]["values"]]
    cfg["studies"]["rankclip"]["ablations"] = abl
    (done / "overlay.yaml").write_text(yaml.safe_dump(cfg))
    try:
        jobs = planned(done)
        out = planned_outputs(done)
    finally:
        cfg["studies"]["rankclip"].pop("ablations")
        (done / "overlay.yaml").write_text(yaml.safe_dump(cfg))
    assert jobs == {"rankclip_train": 2, "rankclip_eval": 2, "collect": 1, "table": 1,
                    "figure": 1, "metrics_all": 1, "all": 1}
    outputs = re.findall(r"^\s*output: (.*)$", out, re.M)
    assert any("rankclip__rank_weight.md" in o for o in outputs)
    assert not any("rankclip__decay" in o for o in outputs)
    assert planned(done) == {}  # back to the original config: nothing to do


def _edit_and_plan(wd, rel):
    f = wd / "src/mmablate" / rel
    orig = f.read_text()
    f.write_text(orig + "\n# an edit\n")
    try:
        return planned(wd)
    finally:
        f.write_text(orig)


def test_editing_the_ranking_loss_reruns_training_and_what_follows(done):
    jobs = _edit_and_plan(done, "studies/rankclip/losses.py")
    assert jobs == {"rankclip_train": 18, "rankclip_eval": 18, "collect": 2, "table": 2,
                    "figure": 2, "metrics_all": 1, "all": 1}


def test_editing_another_studys_world_module_reruns_nothing_here(done):
    # the shared world depends on the modules it runs, not on the whole world package
    assert _edit_and_plan(done, "world/preference.py") == {}
    assert _edit_and_plan(done, "world/scenes.py")["world"] == 1


def test_editing_the_table_code_reruns_only_tables(done):
    assert _edit_and_plan(done, "report/tables.py") == {"table": 2, "all": 1}
    assert planned(done) == {}


def test_report_gathers_tables_and_figures(done):
    snakemake(done, "--report", "report.html")
    html = (done / "report.html").read_text(errors="replace")
    assert "rankclip__decay" in html and "rankclip__rank_weight" in html
