"""The one interface every study implements: its place in the pipeline (light imports only).

A study's ``mmablate.studies.<id>.pipeline`` module defines a subclass of `StudyPipeline` and
exports one instance as ``STUDY`` (`mmablate.pipeline.study_of`). The subclass names its
description (``spec``: `mmablate.studies.spec.Study`), from which the title, the ablatable parts,
the metrics and each ablated value's check (`Part.check`) follow, and implements `variant`
(a variant's stage configs) and `label`; every other hook has a default that does nothing.

Checks of a study's config come in two places only: types and ranges of each key in the
schema (``workflow/schemas/config.schema.yaml``, with a ``description:`` per key), and the
checks across keys (and of paths) in `validate`. A new config key is a schema entry, plus a
cross-field check in `validate` where it depends on another key.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from .spec import Study


class StudyPipeline(ABC):
    spec: Study  # the study's description (mmablate.studies.spec)

    # ---- facts of the description ------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def TITLE(self) -> str:
        """The tables' title line."""
        return self.spec.caption

    @property
    def ABLATABLE(self) -> dict:
        """dotted config key → what the part is."""
        return self.spec.ablatable

    @property
    def METRICS(self) -> dict:
        """metric id → its column header (label, unit, direction)."""
        return self.spec.metric_records

    def check_value(self, key: str, value) -> None:
        """A ValueError unless `value` is a valid value of the ablatable part at `key`."""
        self.spec.part_by_key(key).check(value)

    # ---- what each study implements ----------------------------------------------------------
    @abstractmethod
    def variant(self, P, vcfg: dict):
        """Registers the stages of one variant (the study config with one key replaced) on
        pipeline `P`; returns (its row's job: `mmablate.pipeline.Job`, {seed: eval metrics
        path})."""

    def label(self, key: str, value, scfg: dict | None = None) -> str:
        """A value's row label: a choice's label from the description, else the number."""
        part = self.spec.part_by_key(key)
        if not part.is_number:
            return part.values[value].label
        return f"{value:g}" if isinstance(value, float) else str(value)

    # ---- optional hooks (defaults: nothing to add) -------------------------------------------
    def validate(self, scfg: dict, where: str) -> None:
        """Checks across keys (and of input paths) of the study config `scfg`, after the
        schema; a ConfigError naming `where` + the dotted key. `scfg["ablations"]` is the
        effective ablation list (from the plans or the config)."""

    def training_blocks(self, scfg: dict) -> dict:
        """dotted key (in the study block) → each block the training harness reads
        (mmablate.training.harness): `mmablate.pipeline.validate` runs the harness's checks
        across its keys (effective_batch a multiple of batch_size) on each."""
        return {}

    def dataset_name(self, scfg: dict, scale: str) -> str:
        """The tables' dataset line."""
        return scfg["eval"]["dataset_name"]

    def references(self, P, scfg: dict) -> list:
        """Reference rows beside every ablation's variants (e.g. the base model), as
        `mmablate.pipeline.Row`s; registers their stages on `P`."""
        return []

    def extra_metrics(self, scfg: dict) -> list:
        """Metric ids reported beside the plan's (e.g. a world oracle the paper cannot have)."""
        return []

    def metric_labels(self, scfg: dict, scale: str) -> dict:
        """metric id → a column label replacing the description's (e.g. by scale)."""
        return {}

    def ablation_notes(self, scfg: dict, key: str, rows: list) -> list[str]:
        """Sentences the caption of the ablation of `key` must carry whatever its numbers show
        (e.g. rows equal by construction); `rows`: its `mmablate.pipeline.Row`s."""
        return []

    def table_metrics(self, scfg: dict, metrics: list) -> list:
        """An ablation's table columns from the plan's metrics (+ `extra_metrics`), e.g. one
        column per dataset where the scale evaluates on several; default: unchanged."""
        return metrics
