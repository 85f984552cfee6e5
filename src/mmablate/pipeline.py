"""Resolves the config into the pipeline's jobs: variants, stage configs, ablation tables.

This module is imported by the Snakefile at parse time, so it stays light (no torch, no
open_clip). It

1. validates the merged config against ``workflow/schemas/config.schema.yaml`` and each
   study's own checks, naming the config file(s) and the key at fault;
   Each study's ablations come from the plan documents in ``config/plans/`` (mmablate.plans:
   title → study, ablated part → key, replacements → values) unless its config block lists
   ``ablations:`` explicitly;
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
from .studies.spec import STUDY_IDS, STUDY_SPECS
from .util import canonical, config_hash, get_path, set_path, write_if_changed

SRC = Path(__file__).resolve().parent
REPO = SRC.parent.parent
# The studies: every described study (mmablate.studies.spec); each ships its package.
STUDIES = STUDY_IDS


def study_of(study: str):
    """The study's implementation of the one study protocol (mmablate.studies.protocol)."""
    return importlib.import_module(f"mmablate.studies.{study}.pipeline").STUDY


SEED = "{seed}"  # a Ref's seed: the same seed as the job that reads it


@dataclass(frozen=True)
class Ref:
    """An upstream job's main output, named by stage and config hash (and seed)."""
    stage: str
    h: str
    seed: object = None  # None (not per seed) | int | SEED


@dataclass(frozen=True)
class Job:
    """One registered job: its stage, config hash and results root. `dir` holds its outputs
    (`<results>/<study>/<name>/<hash>`); `output(seed)` is its main output file (of `seed`
    where per seed); `ref(seed)` names it as an upstream of another job."""
    stage: str
    hash: str
    results: str

    @property
    def template(self) -> str:
        return stage_outputs()[self.stage]

    @property
    def dir(self) -> str:
        t = self.template
        return f"{self.results}/" + t[:t.index("{h}")] + self.hash

    def output(self, seed=None) -> str:
        t = self.template
        if ("{seed}" in t) != (seed is not None):
            raise ValueError(f"{self.stage}: seed {seed!r} for output template {t!r}")
        return f"{self.results}/" + t.format(h=self.hash, seed=seed)

    def ref(self, seed=None) -> Ref:
        """`seed`: an int, SEED (the reading job's own seed) or None (not per seed)."""
        return Ref(self.stage, self.hash, seed)


def ref(job: Job | None, seed=None) -> Ref | None:
    """`job.ref(seed)`, or None where there is no such job (a real path, a skipped stage)."""
    return None if job is None else job.ref(seed)


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
    def __init__(self, config: dict, configfiles=(), results: str | None = None,
                 write: bool = True, plans=None):
        """`plans`: plan files to read; default: every plan in the config's `plans_dir`.
        `results`: the outputs' root; default: the config's `results` (default "results")."""
        self.configfiles = [str(c) for c in configfiles] or ["<config>"]
        validate_schema(config, self.configfiles)
        self.config = config
        self.planset, self.notes = self._load_plans(plans)
        self.study_ablations = effective_ablations(config, self.planset)
        validate(config, self.configfiles, self.study_ablations, schema=False)
        self.scale = config["scale"]
        self.seeds = list(range(config["seeds"]))
        self.threads = config.get("threads", 1)
        self.results = (results or config.get("results") or "results").rstrip("/")
        # a rehearsal (config/scales/rehearsal.yaml): the report says so; no stage reads it
        self.rehearsal = bool(config.get("rehearsal", False))
        self.stages: dict[str, dict[str, dict]] = {}
        # stage → hash → {input name: [Ref]}: the jobs whose outputs a job reads
        self.needs: dict[str, dict[str, dict]] = {}
        self.ablations: list[Ablation] = []
        self.extra_targets: list[str] = []  # study-specific outputs (e.g. extra figures)
        for study in self.enabled_studies():
            self._plan_study(study)
        if write:
            self.write_configs()

    # ---- config ----------------------------------------------------------------------------
    def enabled_studies(self) -> list[str]:
        return [s for s in STUDIES if self.config["studies"].get(s, {}).get("enabled", False)]

    def _load_plans(self, plans):
        from .plans.load import load_plans, plan_files

        files = plan_files(plans_dir(self.config)) if plans is None else list(plans)
        ps = load_plans(files)
        notes = []
        for study, srcs in ps.sources.items():
            names = ", ".join(Path(f).name for f in srcs)
            scfg = self.config["studies"].get(study)
            if scfg is None or not scfg.get("enabled", False):
                notes.append(f"plan(s) {names}: study {study} is disabled in the config; skipped")
            elif "ablations" in scfg:
                notes.append(f"plan(s) {names}: studies.{study}.ablations is set in the config "
                             "and overrides the plans")
            elif "plan" in scfg and scfg["plan"] != "+".join(Path(f).name.split("_")[0]
                                                            for f in srcs):
                notes.append(f"studies.{study}.plan is {scfg['plan']!r} but the plans naming "
                             f"{study} are {names}; those are what runs")
        return ps, notes

    def where(self, key: str) -> str:
        return f"{' + '.join(self.configfiles)}: {key}"

    # ---- stages ----------------------------------------------------------------------------
    def add_stage(self, stage: str, cfg: dict, needs: dict | None = None) -> Job:
        """Registers the job of `stage` with resolved config `cfg`; returns it (its config hash,
        directory, outputs).

        `needs` names the upstream jobs it reads, by stage and hash (`Ref`s, or lists of them,
        per input name): the rules' one input function (`inputs`) turns them into those jobs'
        output files. The config itself carries whatever paths the stage's code opens."""
        h = config_hash(cfg)
        self.stages.setdefault(stage, {})[h] = cfg
        if needs is not None:
            clean = {k: [r for r in (v if isinstance(v, list) else [v]) if r is not None]
                     for k, v in needs.items()}
            clean = {k: v for k, v in clean.items() if v}
            old = self.needs.setdefault(stage, {}).setdefault(h, clean)
            if old != clean:  # the same config must read the same upstream jobs
                raise RuntimeError(f"{stage} {h}: two different upstream sets: {old} / {clean}")
        return Job(stage, h, self.results)

    def job(self, stage: str, h: str) -> Job:
        """The registered job `h` of `stage` (a clear error for an unknown one)."""
        self.stage(stage, h)
        return Job(stage, h, self.results)

    def job_at(self, stage: str, path: str) -> Job | None:
        """The registered `stage` job whose directory `path` is or lies in, else None."""
        for h in self.stages.get(stage, {}):
            j = Job(stage, h, self.results)
            if path == j.dir or path.startswith(j.dir + "/"):
                return j
        return None

    def inputs(self, stage: str, h: str, seed=None) -> dict[str, list[str]]:
        """The files a job of `stage` (config hash `h`, seed `seed`) reads from upstream jobs,
        by input name: one input function serves every rule (workflow/rules/common.smk)."""
        self.stage(stage, h)  # a clear error for an unknown job
        out = {}
        for name, refs in self.needs.get(stage, {}).get(h, {}).items():
            paths = []
            for r in refs:
                s = (int(seed) if seed is not None else None) if r.seed == SEED else r.seed
                p = Job(r.stage, r.h, self.results).output(s)
                if p not in paths:
                    paths.append(p)
            out[name] = paths
        return out

    def stage(self, stage: str, h: str) -> dict:
        try:
            return self.stages[stage][h]
        except KeyError:
            raise ConfigError(f"no {stage} job with config hash {h} in this config") from None

    def add_target(self, path: str) -> None:
        """An extra output of `all` (a study's own figure beyond the ablation tables)."""
        if path not in self.extra_targets:
            self.extra_targets.append(path)

    def output(self, stage: str, h: str, seed=None) -> str:
        """The main output file of job `h` of `stage` (of seed `seed` where per seed)."""
        return Job(stage, h, self.results).output(seed)

    def output_pattern(self, stage: str, name: str | None = None) -> str:
        """The rule's output pattern of `stage`, with the {h} (and {seed}) wildcards; with
        `name`, that of another file the job writes beside its main output."""
        t = stage_outputs()[stage]
        return f"{self.results}/" + (t if name is None else f"{t.rpartition('/')[0]}/{name}")

    def job_of(self, path: str):
        """(stage, hash, seed or None) of the job whose main output is `path`, else None."""
        import re

        for stage, t in stage_outputs().items():
            rx = re.escape(f"{self.results}/" + t).replace(r"\{h\}", r"(?P<h>[0-9a-f]+)")
            rx = rx.replace(r"\{seed\}", r"(?P<seed>\d+)")
            m = re.fullmatch(rx, path)
            if m:
                return stage, m["h"], int(m["seed"]) if "seed" in m.groupdict() else None
        return None

    def config_path(self, stage: str, h: str) -> str:
        return f"{self.results}/configs/{stage}/{h}.json"

    def world(self, world_cfg: dict) -> Job:
        """Registers the shared world-generation stage; returns its job."""
        return self.add_stage("world", world_cfg)

    # ---- ablations -------------------------------------------------------------------------
    def _plan_study(self, study: str):
        mod = study_of(study)
        scfg = self.config["studies"][study]
        refs = mod.references(self, scfg)
        # metrics a study reports beside the plan's (e.g. a world oracle the paper cannot have)
        extra = mod.extra_metrics(scfg)
        for k, ab in enumerate(self.study_ablations[study]):
            metrics = list(ab["metrics"]) + [m for m in extra if m not in ab["metrics"]]
            metrics = mod.table_metrics(scfg, metrics)  # scale-dependent (e.g. one per dataset)
            a = Ablation(study, ab["id"], ab.get("part", ""), ab["key"], metrics)
            base_value = get_path(scfg, ab["key"])
            values = list(ab["values"])
            if not any(canonical(v) == canonical(base_value) for v in values):
                # A plan may list only the replacements; the baseline row is always shown.
                values.insert(0, base_value)
            for value in values:
                vcfg = copy.deepcopy(scfg)
                set_path(vcfg, ab["key"], value)
                job, evals = mod.variant(self, vcfg)
                a.rows.append(Row(mod.label(ab["key"], value, scfg), value,
                                  canonical(value) == canonical(base_value), job.hash, evals))
            a.rows += refs
            self.ablations.append(a)

    def ablation_config(self, a: Ablation) -> dict:
        mod = study_of(a.study)
        scfg = self.config["studies"][a.study]
        # a study may label its metrics by scale (e.g. world twins vs the published models)
        labels = mod.metric_labels(scfg, self.scale)
        # what the caption must say that the numbers cannot (e.g. rows equal by construction);
        # the key is written only when there is a note, so other ablations' files stay as they were
        notes = mod.ablation_notes(scfg, a.key, a.rows)
        return {
            "study": a.study, "ablation": a.id, "part": a.part, "key": a.key,
            # the scale the numbers come from: a rehearsal runs the paper configuration's code
            # path on random miniature models, and its tables say so (mmablate.report)
            "title": mod.TITLE, "scale": "rehearsal" if self.rehearsal else self.scale,
            "seeds": self.seeds,
            "dataset": mod.dataset_name(scfg, self.scale),
            "metrics": [{"id": m, **mod.METRICS[m], **({"label": labels[m]} if m in labels else {})}
                        for m in a.metrics],
            "rows": [{"label": r.label, "value": r.value, "is_baseline": r.is_baseline,
                      "config_hash": r.config_hash, "kind": r.kind,
                      "evals": {str(s): p for s, p in sorted(r.evals.items())}} for r in a.rows],
            **({"notes": notes} if notes else {}),
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
        return out + self.extra_targets


def configfile_order(configfiles, default: str) -> list[str]:
    """The config files in merge order: Snakemake lists `--configfile` overlays before the
    Snakefile's own `configfile:`, which is merged first (the overlays override it)."""
    files = [str(f) for f in configfiles]
    d = (REPO / default).resolve()
    first = [f for f in files if Path(f).resolve() == d or Path(f).resolve() == Path(default).resolve()]
    return (first or [default]) + [f for f in files if f not in first]


WORLD_OUTPUTS = {"world": "world/{h}/summary.json"}


def stage_outputs() -> dict:
    """stage → its job's main output relative to the results dir: the shared world's and each
    available study's `stages` (mmablate.studies.spec; the rules' `output:` is
    `Pipeline.output_pattern`)."""
    out = dict(WORLD_OUTPUTS)
    for study in STUDIES:
        out.update(STUDY_SPECS[study].stages)
    return out


def stage_job(stage: str) -> str:
    """The name of a job of `stage` with its wildcards, `<study>/<name>/{h}` (and `/s{seed}`
    where per seed): its log is `logs/<this>.log`, its benchmark
    `<results>/benchmarks/<this>.tsv` (workflow/rules/common.smk)."""
    t = stage_outputs()[stage]
    return t[:t.index("{h}") + 3] + ("/s{seed}" if "{seed}" in t else "")


# ---- plans ---------------------------------------------------------------------------------
def plans_dir(config: dict) -> Path:
    """The plans directory: config `plans_dir` (default config/plans), relative to the workflow."""
    d = Path(config.get("plans_dir", "config/plans"))
    return d if d.is_absolute() else REPO / d


def effective_ablations(config: dict, planset) -> dict:
    """study → its ablations (config form): the config's explicit list, else its plans'."""
    out = {}
    for study, scfg in config["studies"].items():
        if "ablations" in scfg:
            out[study] = scfg["ablations"]
        else:
            out[study] = planset.by_study.get(study, [])
    return out


# ---- validation ----------------------------------------------------------------------------
def schema_path() -> Path:
    return REPO / "workflow" / "schemas" / "config.schema.yaml"


_SCHEMA: dict = {}  # (path, mtime, size) → (schema, validator): read once per process


def load_schema() -> dict:
    """The config schema (YAML; shared property sets are anchors merged with `<<:`)."""
    return _schema_validator()[0]


def _schema_validator():
    import jsonschema
    import yaml

    p = schema_path()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _SCHEMA:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        schema = yaml.load(p.read_text(), Loader=loader)
        _SCHEMA.clear()
        _SCHEMA[key] = (schema, jsonschema.Draft202012Validator(schema))
    return _SCHEMA[key]


def _dotted(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top>"


def schema_errors(config: dict, configfiles=("<config>",)) -> list[str]:
    """One line per schema violation: the dotted key, what is wrong, and which of the config
    files set it (when there are several and they exist)."""
    from .config import origins

    files = [str(c) for c in configfiles]
    real = [f for f in files if Path(f).is_file()]
    lines = []
    errors = sorted(_schema_validator()[1].iter_errors(config),
                    key=lambda e: [str(p) for p in e.absolute_path])
    for e in errors:
        path = list(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = sorted(e.schema.get("properties", {}))
            extra = [k for k in e.instance if k not in e.schema.get("properties", {})]
            for k in extra:
                at = origins(real, path + [k]) if len(real) > 1 else []
                lines.append(f"{_dotted(path + [k])}: unknown key"
                             + (f" (set in {', '.join(at)})" if at else "")
                             + f"; known keys of {_dotted(path)}: {known}")
            continue
        at = origins(real, path)[-1:] if len(real) > 1 and path else []  # the file that wins
        msg = e.message if len(e.message) < 300 else e.message[:300] + " ..."
        lines.append(f"{_dotted(path)}: {msg}" + (f" (set in {', '.join(at)})" if at else ""))
    return lines


def validate_schema(config: dict, configfiles=("<config>",)) -> None:
    where = " + ".join(str(c) for c in configfiles)
    lines = schema_errors(config, configfiles)
    if lines:
        shown = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
        raise ConfigError(f"{where}: invalid config:\n" + "\n".join(f"  {x}" for x in shown))


def validate(config: dict, configfiles=("<config>",), ablations: dict | None = None,
             schema: bool = True) -> None:
    """Schema (unless `schema` is False: the caller checked it) + each enabled study's checks;
    `ablations` (study → list) defaults to the config's."""
    if schema:
        validate_schema(config, configfiles)
    where = " + ".join(str(c) for c in configfiles)
    for study, scfg in config["studies"].items():
        if study not in STUDIES:
            raise ConfigError(f"{where}: studies.{study}: unknown study; known: {list(STUDIES)}")
        if not scfg.get("enabled", False):
            continue
        mod = study_of(study)
        ids = set()
        if ablations is None:  # callers without a Pipeline: the plans in the config's plans_dir
            from .plans.load import load_plans, plan_files

            ablations = effective_ablations(config, load_plans(plan_files(plans_dir(config))))
        abls = ablations.get(study, [])
        if not abls:
            raise ConfigError(f"{where}: studies.{study}: enabled but has no ablations: no plan "
                              f"in {plans_dir(config)} names this study and the config lists "
                              "none")
        for k, ab in enumerate(abls):
            key = (f"studies.{study}.ablations[{k}]" if "ablations" in scfg or ablations is None
                   else f"plan ablation {study}.{ab['id']} (from {plans_dir(config)})")
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
        for akey in sorted(mod.ABLATABLE):  # the study's own (baseline) value of each part
            try:
                mod.check_value(akey, get_path(scfg, akey))
            except (KeyError, ValueError) as e:
                raise ConfigError(f"{where}: studies.{study}.{akey}: {e}") from None
        # the study's own checks see its effective ablations (from plans or the config)
        mod.validate({**scfg, "ablations": abls}, f"{where}: studies.{study}")
        from .training.harness import check as check_training

        for key, block in mod.training_blocks(scfg).items():
            check_training(block, f"{where}: studies.{study}.{key}")
