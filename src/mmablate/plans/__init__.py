"""Ablation plan documents as the pipeline's input (light imports: used at Snakefile parse time).

See parse.py for the format, registry.py for what each study's plans may ask for, and
load.py for how the plans in config/plans/ become each study's ablations.
"""
from .parse import Plan, PlanAblation, PlanError, parse_plan, read_plan, resolve  # noqa: F401
from .registry import REGISTRY  # noqa: F401
