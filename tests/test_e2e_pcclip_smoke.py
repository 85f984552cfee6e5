"""PC-CLIP end to end through snakemake at the smoke scale (the other studies disabled)."""
import json
import subprocess

import pandas as pd
import pytest
import yaml

from .conftest import copy_workflow, with_ablations


@pytest.mark.slow
def test_pcclip_smoke_end_to_end(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = with_ablations(yaml.safe_load((wf / "config/config.yaml").read_text()))
    overlay = {"seeds": 1, "studies": {s: {"enabled": s == "pcclip"} for s in cfg["studies"]}}
    # one replacement per ablation keeps the run short; the full plans run at the tiny scale
    abl = cfg["studies"]["pcclip"]["ablations"]
    keep = {"encoders": ["text_image"], "combine": ["concat"], "captioner": ["bert"],
            "loss": ["hinge"]}
    overlay["studies"]["pcclip"]["ablations"] = [{**a, "values": keep[a["id"]]} for a in abl]
    (wf / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    cmd = ["snakemake", "--cores", "2", "all", "--configfile", "config/scales/smoke.yaml",
           "overlay.yaml", "-q"]
    r = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = wf / "results"
    for ab in ("encoders", "combine", "captioner", "loss"):
        for ext in ("md", "tex", "csv"):
            assert (res / f"tables/pcclip__{ab}.{ext}").is_file()
        assert (res / f"figures/pcclip__{ab}.png").is_file()
        t = pd.read_csv(res / f"tables/pcclip__{ab}.csv")
        assert t["kind"].tolist()[-1] == "reference"  # the base model row
    m = pd.read_csv(res / "metrics.csv")
    assert set(m[m.study == "pcclip"].ablation) == {"encoders", "combine", "captioner", "loss"}
    md = (res / "tables/pcclip__captioner.md").read_text()
    for name in ("LLaMA-2-chat (world llama LM) †", "BERT (world bert LM)", "base CLIP"):
        assert name in md
    # captions once per captioner, with kept fraction and accuracy against the ground truth
    sums = [json.loads(p.read_text()) for p in res.glob("pcclip/captions/*/summary.json")]
    assert sorted(s["captioner"] for s in sums) == ["bert", "llama2_chat"]
    assert all(0 <= s["kept_fraction"] <= 1 and "accuracy" in s for s in sums)
    assert len(list(res.glob("pcclip/embed/*/s0/embeddings.pt"))) == 1
    # nothing reruns on a second call
    r = subprocess.run(cmd[:-1] + ["-n"], cwd=wf, capture_output=True, text=True, timeout=300)
    assert "Nothing to be done" in r.stdout + r.stderr
