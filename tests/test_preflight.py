"""Preflight (mmablate.preflight): each enabled study's `check_inputs(block, where)` runs at DAG
build and in check-config, so bad paper-scale input fails before any job; `preflight: false`
skips it; at the tiny/smoke scale it costs nothing (no heavy import)."""
import copy
import subprocess
import sys

import pytest
import yaml

from mmablate import preflight
from mmablate.cli import main
from mmablate.errors import DataError

from .conftest import REPO, copy_workflow

# a stand-in study check, as the studies write theirs: the file and the dotted key in the message
FAKE = '''
from pathlib import Path

from mmablate.errors import DataError


def check_inputs(block, where):
    p = Path(block["data"].get("root") or "")
    if (p / "BAD").exists():
        raise DataError(f"{where}: studies.rankclip.data.root: {p / 'BAD'}: a corrupt stand-in")
'''


def test_runs_the_enabled_studies_checks(monkeypatch, smoke_config):
    seen = []

    def fake(study):
        return lambda block, where: seen.append((study, block["enabled"], where))

    monkeypatch.setattr(preflight, "study_check", fake)
    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pcclip"]["enabled"] = False
    done = preflight.run(cfg, ["a.yaml", "b.yaml"])
    assert "pcclip" not in done and set(done) == {s for s, _, _ in seen}
    assert {"rankclip", "pairrank", "mmalign"} <= set(done)
    assert all(on and where == "a.yaml + b.yaml" for _, on, where in seen)
    seen.clear()
    for off in (False, "false", "False"):
        assert preflight.run({**cfg, "preflight": off}, ["a.yaml"]) == {} and not seen


def test_a_study_without_preflight_module_is_skipped():
    assert preflight.study_check("no_such_study") is None


def test_check_config_fails_with_the_study_message(monkeypatch, tmp_path, capsys):
    def check(block, where):
        raise DataError(f"{where}: studies.rankclip.data.root: /x/00000.tar: not a tar file")

    monkeypatch.setattr(preflight, "study_check", lambda s: check if s == "rankclip" else None)
    files = [str(REPO / "config/config.yaml"), str(REPO / "config/scales/smoke.yaml")]
    assert main(["check-config", *files]) == 2
    err = capsys.readouterr().err
    assert "studies.rankclip.data.root: /x/00000.tar: not a tar file" in err
    assert "smoke.yaml" in err
    off = tmp_path / "off.yaml"
    off.write_text("preflight: false\n")
    assert main(["check-config", *files, str(off)]) == 0
    assert "preflight: skipped" in capsys.readouterr().out


def test_costs_nothing_at_the_small_scales():
    """At the tiny and smoke scales the blocks read no files: preflight imports no heavy library
    (the studies' checks return at once)."""
    code = ("import sys; sys.path.insert(0, 'src')\n"
            "from mmablate.config import load\nfrom mmablate.preflight import run\n"
            "for extra in ([], ['config/scales/smoke.yaml']):\n"
            "    run(load(['config/config.yaml', *extra]), ['config/config.yaml', *extra])\n"
            "heavy = [m for m in ('torch', 'transformers', 'open_clip', 'diffusers', 'pyarrow',"
            " 'PIL', 'webdataset') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow  # a snakemake process (~4 s of CPU)
def test_dry_run_fails_before_any_job(tmp_path):
    """`snakemake -n` runs the studies' checks at DAG build: a bad input fails the dry run with
    the file and the key; `--config preflight=false` plans the DAG without them."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "src/mmablate/studies/rankclip/preflight.py").write_text(FAKE)
    root = tmp_path / "cc3m"
    root.mkdir()
    (root / "BAD").write_text("")
    (wf / "o.yaml").write_text(yaml.safe_dump({"studies": {
        **{s: {"enabled": False} for s in ("pcclip", "pairrank", "mmalign")},
        "rankclip": {"data": {"root": str(root)}}}}))
    cmd = [sys.executable, "-m", "snakemake", "-n", "all", "--configfile",
           "config/scales/smoke.yaml", "o.yaml"]
    r = subprocess.run(cmd, cwd=wf, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert f"studies.rankclip.data.root: {root / 'BAD'}: a corrupt stand-in" in out
    assert "smoke.yaml + " in out and "o.yaml: studies.rankclip" in out and "Job stats" not in out
    r = subprocess.run(cmd + ["--config", "preflight=false"], cwd=wf, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "Job stats" in r.stdout, (r.stdout + r.stderr)[-2000:]
