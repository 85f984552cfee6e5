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


from mmablate.studies.spec import STUDY_IDS  # noqa: E402  (one list: the study descriptions)


def with_ablations(cfg: dict) -> dict:
    """Writes each study's plan-derived ablations into its config block (explicit form), so a
    test can edit them as a user editing the config would."""
    from mmablate.pipeline import effective_ablations, plans_dir
    from mmablate.plans.load import load_plans, plan_files

    for study, abls in effective_ablations(cfg, load_plans(plan_files(plans_dir(cfg)))).items():
        cfg["studies"][study]["ablations"] = abls
    return cfg


def only_study(cfg: dict, study: str) -> dict:
    for s in cfg["studies"]:
        cfg["studies"][s]["enabled"] = s == study
    return cfg


@pytest.fixture
def smoke_config():
    from mmablate.config import load

    return with_ablations(load([REPO / "config/config.yaml", REPO / "config/scales/smoke.yaml"]))


def copy_workflow(dst: Path) -> Path:
    """A runnable copy of the workflow and package (edits to it do not touch the repo)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "src", "envs", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def endpoint_judge_cfg(url: str, rank_url: str | None = None, **shared) -> dict:
    """paper.yaml's mmalign judge block (its published per-benchmark settings) with the bench
    role at `url` and the rank role at `rank_url` (default `url`), plus the clients' `shared`
    settings (concurrency, retries, backoff_s, ...): the tests' stand-in judges."""
    import copy

    from mmablate.config import load

    j = load([REPO / "config/config.yaml", REPO / "config/scales/paper.yaml"])
    j = copy.deepcopy(j["studies"]["mmalign"]["judge"])
    j["bench"]["endpoint"], j["rank"]["endpoint"] = url, rank_url or url
    j.update(shared)
    return j
