import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's package, even beside another install
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Snakemake's shell lines call `python` and `snakemake`: use this interpreter's environment.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]


@pytest.fixture
def smoke_config():
    import yaml

    from mmablate.cli import _merge

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    _merge(cfg, yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text()))
    return cfg


def copy_workflow(dst: Path) -> Path:
    """A runnable copy of the workflow and package (edits to it do not touch the repo)."""
    for name in ("Snakefile", "workflow", "config", "src", "envs", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst
