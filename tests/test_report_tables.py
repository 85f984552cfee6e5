import json

import pandas as pd
import pytest

from mmablate.report.collect import COLUMNS, collect
from mmablate.report.figures import make_figure
from mmablate.report.tables import make_tables


@pytest.fixture
def ablation(tmp_path):
    vals = {"0": [10.0, 12.0], "0.0625": [20.0, 22.0], "0.25": [15.0, 15.0]}
    ab_rows = []
    for label, (a, b) in vals.items():
        evals = {}
        for seed, v in ((0, a), (1, b)):
            p = tmp_path / f"{label}_{seed}.json"
            p.write_text(json.dumps({"metrics": {"m1": v, "m2": 100 - v}, "chance": {"m1": 5.0}}))
            evals[str(seed)] = str(p)
        ab_rows.append({"label": label, "value": float(label), "is_baseline": label == "0.0625",
                        "config_hash": "h" + label, "kind": "variant", "evals": evals})
    ab = {"study": "s", "ablation": "a", "part": "the weight", "key": "loss.w", "title": "T",
          "scale": "tiny", "seeds": [0, 1], "dataset": "world classes",
          "metrics": [{"id": "m1", "label": "Metric one", "unit": "%", "higher_is_better": True},
                      {"id": "m2", "label": "Metric two", "higher_is_better": False}],
          "rows": ab_rows}
    p = tmp_path / "ab.json"
    p.write_text(json.dumps(ab))
    return p


def test_collect_tidy_columns(ablation, tmp_path):
    out = tmp_path / "m.csv"
    assert collect(ablation, out) == 3 * 2 * 2
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS
    assert set(df["scale"]) == {"tiny"}
    assert df[df.metric == "m2"]["chance"].isna().all()
    assert (df[df.metric == "m1"]["chance"] == 5.0).all()


def test_table_layout(ablation, tmp_path):
    m = tmp_path / "m.csv"
    collect(ablation, m)
    md, tex, csv = tmp_path / "t.md", tmp_path / "t.tex", tmp_path / "t.csv"
    make_tables(ablation, m, md, tex, csv)
    text = md.read_text()
    assert "Scale: tiny" in text and "2 seeds" in text
    assert "| 0.0625 † | **21.00 ± 1.41** | **79.00 ± 1.41** |" in text  # m2: lower is better
    assert "| 0 | 11.00 ± 1.41 | 89.00 ± 1.41 |" in text
    assert r"\textbf{21.00 $\pm$ 1.41}" in tex.read_text()
    df = pd.read_csv(csv)
    assert df.loc[df.w == 0.25, "m1_std"].item() == 0.0


def test_figure(ablation, tmp_path):
    m = tmp_path / "m.csv"
    collect(ablation, m)
    make_figure(ablation, m, tmp_path / "f.png", tmp_path / "f.pdf")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_caption_part_from_a_plan_sentence():
    from mmablate.report.tables import caption

    ab = {"title": "T", "scale": "tiny", "seeds": [0], "dataset": "d", "metrics": [],
          "key": "k", "part": "The formulation of the quality metric"}
    assert "ablation of the formulation of the quality metric." in caption(ab, None)
    ab["part"] = "BDHS mixing"  # an acronym keeps its case
    assert "ablation of BDHS mixing." in caption(ab, None)


def test_paired_change_against_a_per_seed_reference(ablation, tmp_path):
    ab = json.loads(ablation.read_text())
    evals = {}
    for seed, v in ((0, 9.0), (1, 13.0)):  # the reference moves with the seed as the variants do
        p = tmp_path / f"ref_{seed}.json"
        p.write_text(json.dumps({"metrics": {"m1": v, "m2": 100 - v}}))
        evals[str(seed)] = str(p)
    ab["rows"].append({"label": "base model", "value": None, "is_baseline": False,
                       "config_hash": "ref", "kind": "reference", "evals": evals})
    ablation.write_text(json.dumps(ab))
    m = tmp_path / "m.csv"
    collect(ablation, m)
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    make_tables(ablation, m, md, tmp_path / "t.tex", csv)
    text = md.read_text()
    assert "Change against the base model, paired by seed" in text
    # 0.0625: 20−9 = 11 and 22−13 = 9 → +10.00 ± 1.41 (unpaired the spread would be larger)
    assert "| 0.0625 † | +10.00 ± 1.41 | -10.00 ± 1.41 |" in text
    assert "| 0.25 | +4.00 ± 2.83 |" in text
    df = pd.read_csv(csv)
    assert df.loc[df.is_baseline, "m1_delta_mean"].item() == 10.0
    assert df.loc[df.kind == "reference", "m1_delta_mean"].isna().all()


def test_no_paired_change_without_a_per_seed_reference(ablation, tmp_path):
    m = tmp_path / "m.csv"
    collect(ablation, m)
    make_tables(ablation, m, tmp_path / "t.md", tmp_path / "t.tex", tmp_path / "t.csv")
    assert "paired by seed" not in (tmp_path / "t.md").read_text()
    assert "m1_delta_mean" not in pd.read_csv(tmp_path / "t.csv").columns
