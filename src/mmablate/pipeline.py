"""Resolves the config into the pipeline's jobs: variants, stage configs, ablation tables.

This module is imported by the Snakefile at parse time, so it stays light (no torch, no
open_clip). It

1. validates the merged config against ``workflow/schemas/config.schema.yaml`` and each
   study's own checks, naming the config file(s) and the key at fault;
2. expands each study's ablations into *variants* (the study config with one dotted key
   replaced); each study turns a variant into its stage configs;
3. hashes every resolved stage config (canonical JSON) — identical configs are one job with one
   output path, however many ablations ask for them;
4. writes each stage config to ``results/configs/<stage>/<hash>.json`` only when its content
   changed, so rules can take it as an ``input:`` and Snakemake reruns exactly what changed.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .util import canonical, config_hash, get_path, set_path, write_if_changed

STUDIES = ("rankclip", "mmalign")
SRC = Path(__file__).resolve().parent
REPO = SRC.parent.parent


def study_module(study: str):
    return importlib.import_module(f"mmablate.studies.{study}.pipeline")


@dataclass
class Row:
    label: str
    value: object
    is_baseline: bool
    config_hash: str
    evals: dict  # seed -> eval metrics JSON path
    kind: str = "variant"  # or "reference" (e.g. the base model)


@dataclass
class Ablation:
    study: str
    id: str
    part: str
    key: str
    metrics: list
    rows: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.study}__{self.id}"


class Pipeline:
    def __init__(self, config: dict, configfiles=(), results: str = "results", write: bool = True):
        self.configfiles = [str(c) for c in configfiles] or ["<config>"]
        validate(config, self.configfiles)
        self.config = config
        self.scale = config["scale"]
        self.seeds = list(range(config["seeds"]))
        self.threads = config.get("threads", 1)
        self.results = results
        self.stages: dict[str, dict[str, dict]] = {}
        self.ablations: list[Ablation] = []
        for study in self.enabled_studies():
            self._plan_study(study)
        if write:
            self.write_configs()

    # ---- config ----------------------------------------------------------------------------
    def enabled_studies(self) -> list[str]:
        return [s for s in STUDIES if self.config["studies"].get(s, {}).get("enabled", False)]

    def where(self, key: str) -> str:
        return f"{' + '.join(self.configfiles)}: {key}"

    # ---- stages ----------------------------------------------------------------------------
    def add_stage(self, stage: str, cfg: dict) -> str:
        h = config_hash(cfg)
        self.stages.setdefault(stage, {})[h] = cfg
        return h

    def stage(self, stage: str, h: str) -> dict:
        try:
            return self.stages[stage][h]
        except KeyError:
            raise ConfigError(f"no {stage} job with config hash {h} in this config") from None

    def config_path(self, stage: str, h: str) -> str:
        return f"{self.results}/configs/{stage}/{h}.json"

    def world(self, world_cfg: dict) -> str:
        """Registers a world-generation stage; returns its output directory."""
        h = self.add_stage("world", world_cfg)
        return f"{self.results}/world/{h}"

    # ---- ablations -------------------------------------------------------------------------
    def _plan_study(self, study: str):
        mod = study_module(study)
        scfg = self.config["studies"][study]
        refs = mod.references(self, scfg) if hasattr(mod, "references") else []
        for k, ab in enumerate(scfg["ablations"]):
            where = f"studies.{study}.ablations[{k}]"
            a = Ablation(study, ab["id"], ab.get("part", ""), ab["key"], list(ab["metrics"]))
            base_value = get_path(scfg, ab["key"])
            values = list(ab["values"])
            if not any(canonical(v) == canonical(base_value) for v in values):
                # A plan may list only the replacements; the baseline row is always shown.
                values.insert(0, base_value)
            for value in values:
                vcfg = copy.deepcopy(scfg)
                set_path(vcfg, ab["key"], value)
                h, evals = mod.variant(self, vcfg)
                a.rows.append(Row(mod.label(ab["key"], value), value,
                                  canonical(value) == canonical(base_value), h, evals))
            a.rows += refs
            self.ablations.append(a)

    def ablation_config(self, a: Ablation) -> dict:
        mod = study_module(a.study)
        scfg = self.config["studies"][a.study]
        return {
            "study": a.study, "ablation": a.id, "part": a.part, "key": a.key,
            "title": mod.TITLE, "scale": self.scale, "seeds": self.seeds,
            "dataset": mod.dataset_name(scfg, self.scale),
            "metrics": [{"id": m, **mod.METRICS[m]} for m in a.metrics],
            "rows": [{"label": r.label, "value": r.value, "is_baseline": r.is_baseline,
                      "config_hash": r.config_hash, "kind": r.kind,
                      "evals": {str(s): p for s, p in sorted(r.evals.items())}} for r in a.rows],
        }

    def ablation(self, name: str) -> Ablation:
        for a in self.ablations:
            if a.name == name:
                return a
        raise ConfigError(f"no ablation {name!r}; known: {[a.name for a in self.ablations]}")

    def ablation_evals(self, name: str) -> list[str]:
        return sorted({p for r in self.ablation(name).rows for p in r.evals.values()})

    # ---- outputs ---------------------------------------------------------------------------
    def write_configs(self) -> None:
        for stage, by_hash in self.stages.items():
            for h, cfg in by_hash.items():
                write_if_changed(self.config_path(stage, h), canonical(cfg) + "\n")
        for a in self.ablations:
            write_if_changed(f"{self.results}/configs/ablation/{a.name}.json",
                             canonical(self.ablation_config(a)) + "\n")

    def targets(self) -> list[str]:
        out = [f"{self.results}/metrics.csv"]
        for a in self.ablations:
            out += [f"{self.results}/tables/{a.name}.{ext}" for ext in ("md", "tex", "csv")]
            out += [f"{self.results}/figures/{a.name}.{ext}" for ext in ("png", "pdf")]
        return out


def sources(*names: str) -> list[str]:
    """Source files (relative to the repo) that a stage's output depends on."""
    out = []
    for n in names:
        p = SRC / n
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        if not files or not files[0].exists():
            raise FileNotFoundError(f"stage source {p} not found")
        out += [str(f.relative_to(REPO)) for f in files]
    return out


# ---- validation ----------------------------------------------------------------------------
def schema_path() -> Path:
    return REPO / "workflow" / "schemas" / "config.schema.yaml"


def validate(config: dict, configfiles=("<config>",)) -> None:
    import jsonschema
    import yaml

    where = " + ".join(str(c) for c in configfiles)
    schema = yaml.safe_load(schema_path().read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config),
                    key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}"
                 for e in errors[:10]]
        raise ConfigError(f"{where}: invalid config:\n" + "\n".join(lines))
    for study, scfg in config["studies"].items():
        if study not in STUDIES:
            raise ConfigError(f"{where}: studies.{study}: unknown study; known: {list(STUDIES)}")
        if not scfg.get("enabled", False):
            continue
        mod = study_module(study)
        ids = set()
        for k, ab in enumerate(scfg["ablations"]):
            key = f"studies.{study}.ablations[{k}]"
            if ab["id"] in ids:
                raise ConfigError(f"{where}: {key}.id: duplicate ablation id {ab['id']!r}")
            ids.add(ab["id"])
            try:
                get_path(scfg, ab["key"])
            except KeyError:
                raise ConfigError(f"{where}: {key}.key: {ab['key']!r} is not a key of "
                                  f"studies.{study}") from None
            if ab["key"] not in mod.ABLATABLE:
                raise ConfigError(f"{where}: {key}.key: {ab['key']!r} cannot be ablated; "
                                  f"ablatable parts: {sorted(mod.ABLATABLE)}")
            for m in ab["metrics"]:
                if m not in mod.METRICS:
                    raise ConfigError(f"{where}: {key}.metrics: unknown metric {m!r}; "
                                      f"known: {sorted(mod.METRICS)}")
            for j, v in enumerate(ab["values"]):
                try:
                    mod.check_value(ab["key"], v)
                except ValueError as e:
                    raise ConfigError(f"{where}: {key}.values[{j}]: {e}") from None
        mod.validate(scfg, f"{where}: studies.{study}")
