"""`python -m mmablate cost`: what a config's grid costs before it runs, and whether each job
fits its SLURM request.

1. The jobs: the pipeline's DAG (`mmablate.pipeline.Pipeline`), walked from the targets of
   `all` through each job's upstream jobs exactly as the rules' one input function resolves them
   (`Pipeline.inputs`), so the jobs per rule are those `snakemake -n all` plans (checked by a
   test). Data paths that are not at hand (a researcher prices the grid before downloading) are
   replaced by empty stand-ins for planning only, and an unset judge endpoint by a placeholder:
   neither changes which jobs exist.
2. Per job, what it computes (`mmablate.cost.stages`): its models, forward / train / generate,
   FLOPs per sample counted on the meta device (`mmablate.cost.models`), and the sample count
   with its basis (data, config, published size, assumption).
3. Time: FLOPs ÷ (GPU peak × MFU); a generation is also bounded by reading the weights once per
   decoding step (bytes ÷ memory bandwidth): the slower of the two. With ``--bench FILE`` (a
   ``mmablate bench --json`` result from the user's GPU) a study's training rule uses the FLOP/s
   that bench measured instead of the assumed MFU.
4. The profile: each rule's estimated wall time per job (work ÷ its ranks when the rule starts
   one process per GPU, `mmablate launch`) against the ``runtime`` and ``gpu`` the SLURM profile
   requests (read by `mmablate.jobs`, as `slurm-check` reads them): a job past its runtime is
   named, with the resubmissions its checkpoints would need, and so is a request far larger
   than the estimate.

Not in the figure: data loading and JPEG decoding, judge requests, I/O, start-up and model
loading, element-wise operations and the optimizer (see docs/cost.md).
"""
from __future__ import annotations

import json
import math
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError

# Config keys whose files or directories the studies' checks require to exist (each study's
# `validate`, mmablate.studies.protocol). Absent ones get an empty stand-in for planning; tests/test_cost.py
# builds the paper DAG with every one of them absent, so a new required path shows up there.
DATA_PATHS = {
    "rankclip": {"data.root": "dir", "data.eval_root": "dir"},
    "pcclip": {"pairs.captions_json": "file", "pairs.eval_csv": "file", "pairs.image_dir": "dir"},
    "pairrank": {"data.pairs": "dir", "data.prompts": "file"},
}
# `mmablate bench` cases → the training rule whose throughput each measures
BENCH_RULES = {"rankclip": "rankclip_train", "pcclip": "pcclip_finetune",
               "pairrank": "pairrank_dpo", "mmalign": "mmalign_dpo"}
STUDY_OF = {"world": "(shared)", "collect": "(report)", "table": "(report)",
            "figure": "(report)", "metrics_all": "(report)"}


def planning_config(cfg: dict, tmp: Path) -> tuple[dict, list]:
    """The config with stand-ins for absent data paths and an unset judge endpoint; returns it
    and what was stood in (the original config is not changed)."""
    import copy

    from ..util import get_path, set_path

    cfg = copy.deepcopy(cfg)
    stood = []
    for study, keys in DATA_PATHS.items():
        sc = cfg.get("studies", {}).get(study)
        if not sc or not sc.get("enabled", False):
            continue
        for key, kind in keys.items():
            try:
                v = get_path(sc, key)
            except KeyError:
                continue
            if v is None or Path(str(v)).exists():
                continue
            src = sc.get("pairs" if study == "pcclip" else "data", {}).get("source")
            if src == "world":
                continue
            p = tmp / study / key
            if kind == "dir":
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("")
            set_path(sc, key, str(p))
            stood.append(f"studies.{study}.{key}: {v} not at hand")
    mm = cfg.get("studies", {}).get("mmalign")
    if mm and mm.get("enabled") and mm.get("judge", {}).get("kind") == "endpoint":
        for role in ("rank", "bench"):
            r = mm["judge"].get(role)
            if isinstance(r, dict) and not r.get("endpoint"):
                r["endpoint"] = "http://judge.invalid/v1"
                stood.append(f"studies.mmalign.judge.{role}.endpoint: unset (judge requests "
                             f"are not priced)")
    return cfg, stood


def dag_jobs(P) -> list:
    """(stage, hash, seed) of every job `all` needs, from its targets and upstream inputs."""
    todo = [p for a in P.ablations for r in a.rows for p in r.evals.values()]
    todo += list(P.extra_targets)
    seen, order = set(), []
    while todo:
        j = P.job_of(todo.pop())
        if j is None or j in seen:
            continue
        seen.add(j)
        order.append(j)
        for paths in P.inputs(*j).values():
            todo += paths
    return sorted(order, key=lambda j: (j[0], j[1], -1 if j[2] is None else j[2]))


def report_jobs(P) -> dict:
    """The report rules' jobs (workflow/rules/report.smk): per ablation one collect, one table
    and one figure; one metrics_all."""
    n = len(P.ablations)
    return {"collect": n, "table": n, "figure": n, "metrics_all": 1}


# ---- requests ----------------------------------------------------------------------------------
@dataclass
class RuleRequest:
    runtime_min: float | None
    gpus: int
    ranks: int            # processes the command starts (launch --nproc {resources.gpu}) or 1
    partition: str | None


def profile_requests(profile) -> dict:
    """rule → RuleRequest from a SLURM profile, read as `slurm-check` reads it (mmablate.jobs:
    the workflow's rules parsed by snakemake, the profile's default/set resources)."""
    from ..jobs import load_rules, mmablate_commands, profile_requests as reqs_of, read_profile
    from ..pipeline import REPO

    prof = read_profile(profile)
    rules = load_rules(REPO, ["config/config.yaml", "config/scales/smoke.yaml"])
    by_name = {r.name: r for r in rules}
    out = {}
    for r in reqs_of(prof, rules):
        launched = "launch" in mmablate_commands(by_name[r.rule].shellcmd)
        out[r.rule] = RuleRequest(r.runtime, r.gpus, r.gpus if launched and r.gpus else 1,
                                  r.partition)
    return out, prof


# ---- throughput --------------------------------------------------------------------------------
@dataclass
class Rates:
    gpu: object           # hardware.GPU
    mfu: float
    bench: dict = field(default_factory=dict)   # rule → (FLOP/s measured, note)

    def flops_per_s(self, rule: str, mode: str) -> tuple[float, str]:
        if mode == "train" and rule in self.bench:
            return self.bench[rule]
        return self.gpu.bf16_tflops * 1e12 * self.mfu, f"MFU {self.mfu:g} × {self.gpu.name} peak"


def read_bench(path, gpu_override=None) -> tuple[dict, object]:
    """rule → (measured FLOP/s, note) from a `mmablate bench --json` file, and its GPU."""
    from .hardware import by_device_name

    p = Path(path)
    try:
        data = json.loads(p.read_text())
        results = data["results"]
    except FileNotFoundError:
        raise ConfigError(f"{p}: bench result file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{p}: not a `mmablate bench --json` result ({e})") from None
    if data.get("size") != "paper":
        raise ConfigError(f"{p}: size {data.get('size')!r}: only a paper-size bench measures a "
                          f"paper-scale throughput (run `mmablate bench --size paper --json …`)")
    out = {}
    for k, r in enumerate(results):
        try:
            case, flops, step_s = r["case"], r["flops"], float(r["step_s"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{p}: results[{k}]: needs case, flops and step_s") from None
        if case in BENCH_RULES and flops:
            out[BENCH_RULES[case]] = (float(flops) / step_s,
                                      f"bench {p.name}: {case} {float(flops) / step_s / 1e12:.1f} "
                                      f"TFLOP/s measured on {data.get('device_name', '?')}")
    gpu = gpu_override or by_device_name(str(data.get("device_name", "")))
    return out, gpu


# ---- the estimate ------------------------------------------------------------------------------
@dataclass
class JobEstimate:
    rule: str
    study: str
    h: str
    seed: object
    flops: float
    gpu_s: float          # single-GPU seconds of work
    wall_s: float         # work ÷ ranks
    alloc_gpu_s: float    # wall × GPUs requested
    items: list
    notes: list
    priced: bool
    resumable: bool


def _item_seconds(w, rule: str, rates: Rates) -> tuple[float, str]:
    rate, how = rates.flops_per_s(rule, w.mode)
    s = w.flops / rate
    if w.mode == "generate" and w.decode_steps:
        mem = w.decode_steps * w.weight_bytes / (rates.gpu.hbm_tbs * 1e12)
        if mem > s:
            return mem, (f"weight reads: {w.decode_steps:,.0f} decoding steps × "
                         f"{w.weight_bytes / 1e9:.1f} GB ÷ {rates.gpu.hbm_tbs:g} TB/s")
    return s, how


def study_of(P, stage: str) -> str:
    from ..studies.spec import STUDY_SPECS

    for s, spec in STUDY_SPECS.items():
        if stage in spec.stages:
            return s
    return STUDY_OF.get(stage, "?")


def estimate(configfiles, gpu="H100", mfu=0.4, bench=None, profile=None, far=10.0,
             peak_tflops=None, bandwidth_tbs=None) -> dict:
    """The whole estimate as a JSON-able dict (`table` prints it)."""
    from ..config import load
    from ..pipeline import Pipeline, configfile_order
    from . import stages as ST
    from .hardware import GPUS, gpu as gpu_of

    if not (0 < float(mfu) <= 1):
        raise ConfigError(f"--mfu {mfu}: must be in (0, 1]")
    files = configfile_order(configfiles, "config/config.yaml")
    cfg = load(files)
    with tempfile.TemporaryDirectory(prefix="mmablate-cost-") as tmp:
        pcfg, stood = planning_config(cfg, Path(tmp))
        P = Pipeline(pcfg, files, write=False)
        # estimators look at the real paths (counted from the data when there)
        _unstand(P, cfg, pcfg)
        bench_rates, bgpu = read_bench(bench) if bench else ({}, None)
        if str(gpu).lower() == "auto":
            if bgpu is None:
                raise ConfigError("--gpu auto: needs a --bench file from a GPU of the table "
                                  f"(known: {sorted(GPUS)})")
            g = bgpu
        else:
            g = gpu_of(gpu, peak_tflops, bandwidth_tbs)
        rates = Rates(g, float(mfu), bench_rates)
        if profile is None:
            profile = "profiles/slurm" if cfg.get("scale") == "paper" else "profiles/slurm-small"
        from ..pipeline import REPO

        prof_path = Path(profile) if Path(profile).exists() else REPO / profile
        reqs, _ = profile_requests(prof_path)
        jobs = []
        for stage, h, seed in dag_jobs(P):
            jw = ST.job_work(P, stage, h, seed)
            req = reqs.get(stage)
            items, gpu_s = [], 0.0
            for w in jw.items:
                s, how = _item_seconds(w, stage, rates)
                gpu_s += s
                items.append({"what": w.what, "mode": w.mode, "unit": w.unit,
                              "flops_per_sample": w.flops_per_sample, "samples": w.samples,
                              "flops": w.flops, "gpu_s": s, "time_basis": how,
                              "basis": [str(b) for b in w.basis]})
            ranks = req.ranks if req else 1
            wall = gpu_s / ranks
            jobs.append(JobEstimate(stage, study_of(P, stage), h, seed,
                                    sum(w.flops for w in jw.items), gpu_s, wall,
                                    wall * (req.gpus if req and req.gpus else 0) if gpu_s else 0.0,
                                    items, jw.notes, jw.priced, jw.resumable))
    rules = _by_rule(P, jobs, reqs, far)
    return {
        "configfiles": files, "scale": cfg.get("scale"),
        "gpu": asdict(g), "mfu": float(mfu), "bench": bench,
        "profile": str(profile), "stand_ins": stood,
        "rules": rules, "jobs": [asdict(j) for j in jobs],
        "total": _total(rules),
        "assumptions": {k: {"value": v[0], "source": v[1]} for k, v in ST.ASSUMED.items()},
        "published_sizes": {k: {"value": v[0], "source": v[1]} for k, v in ST.PUBLISHED_SIZES.items()},
        "not_in_figure": ["data loading and decoding", "judge requests", "I/O and checkpoints",
                          "start-up and model loading", "element-wise ops and the optimizer"],
    }


def _unstand(P, cfg, pcfg):
    """Puts the real (absent) data paths back into the stage configs' study blocks' reads: the
    estimators count from `path` when it exists, so a stand-in (empty) must not be read as the
    data. Stand-ins are empty files/dirs under a temporary directory; replace them by the
    originals wherever a stage config carries one."""
    from ..util import get_path

    swap = {}
    for study, keys in DATA_PATHS.items():
        for key in keys:
            try:
                a, b = get_path(pcfg["studies"][study], key), get_path(cfg["studies"][study], key)
            except KeyError:
                continue
            if a != b:
                swap[str(a)] = str(b)
    if not swap:
        return

    def fix(o):
        if isinstance(o, dict):
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return swap.get(o, o) if isinstance(o, str) else o
    for stage, by_h in P.stages.items():
        for h in list(by_h):
            by_h[h] = fix(by_h[h])


def _by_rule(P, jobs, reqs, far) -> list:
    per = defaultdict(list)
    for j in jobs:
        per[j.rule].append(j)
    out = []
    for rule, js in per.items():
        req = reqs.get(rule)
        worst = max(js, key=lambda j: j.wall_s)
        r = {"rule": rule, "study": js[0].study, "jobs": len(js),
             "flops_per_job": [j.flops for j in js], "gpu_h": sum(j.gpu_s for j in js) / 3600,
             "alloc_gpu_h": sum(j.alloc_gpu_s for j in js) / 3600,
             "wall_h_max": worst.wall_s / 3600, "wall_h_mean": sum(j.wall_s for j in js) / len(js) / 3600,
             "priced": all(j.priced for j in js),
             "runtime_min": req.runtime_min if req else None, "gpus": req.gpus if req else 0,
             "ranks": req.ranks if req else 1, "flags": [],
             "samples": _samples_summary(worst), "basis": _basis_summary(js)}
        if req and req.runtime_min and worst.gpu_s:
            est_min = worst.wall_s / 60
            if est_min > req.runtime_min:
                over = [j for j in js if j.wall_s / 60 > req.runtime_min]
                if worst.resumable:
                    k = math.ceil(est_min / req.runtime_min) - 1
                    r["flags"].append(f"PAST RUNTIME: {len(over)} job(s) need up to "
                                      f"{est_min:,.0f} min > runtime {req.runtime_min:g}: "
                                      f"{k} resubmission(s) resuming from checkpoints")
                else:
                    r["flags"].append(f"PAST RUNTIME: {len(over)} job(s) need up to "
                                      f"{est_min:,.0f} min > runtime {req.runtime_min:g} and "
                                      f"the stage does not resume: raise the runtime")
                r["resubmissions"] = math.ceil(est_min / req.runtime_min) - 1
                r["past_runtime_jobs"] = [f"{j.rule} {j.h}" + (f" s{j.seed}" if j.seed is not None else "")
                                          for j in over]
            elif req.runtime_min > far * max(est_min, 1.0):
                r["flags"].append(f"over-requested: runtime {req.runtime_min:g} min ≥ {far:g}× "
                                  f"the estimate ({est_min:.1f} min)")
        if req and req.gpus > 1 and req.ranks == 1:
            r["flags"].append(f"{req.gpus} GPUs requested but the command runs one process")
        if req and req.gpus and not worst.gpu_s and all(j.priced for j in js) \
                and not any(j.items for j in js):
            r["flags"].append("GPU requested for a stage without a model")
        out.append(r)
    for name, n in report_jobs(P).items():
        out.append({"rule": name, "study": "(report)", "jobs": n, "flops_per_job": [0.0] * n,
                    "gpu_h": 0.0, "alloc_gpu_h": 0.0, "wall_h_max": 0.0, "wall_h_mean": 0.0,
                    "priced": True, "runtime_min": None, "gpus": 0, "ranks": 1, "flags": [],
                    "samples": "", "basis": "no model (CPU)"})
    order = {s: i for i, s in enumerate(["rankclip", "pcclip", "pairrank", "mmalign"])}
    return sorted(out, key=lambda r: (order.get(r["study"], 9), r["rule"]))


def _samples_summary(j) -> str:
    return "; ".join(f"{it['samples']:,.0f} {it['unit']}s" for it in j.items[:2]) + \
        (" …" if len(j.items) > 2 else "")


def _basis_summary(js) -> str:
    kinds = Counter()
    for j in js:
        for it in j.items:
            for b in it["basis"]:
                kinds[b.split(":")[0]] += 1
    if not kinds:
        return "no model" if all(j.priced for j in js) else "not priced"
    return ", ".join(k for k, _ in kinds.most_common())


def _total(rules) -> dict:
    return {"jobs": sum(r["jobs"] for r in rules) + 1,  # + `all`
            "gpu_h": sum(r["gpu_h"] for r in rules),
            "alloc_gpu_h": sum(r["alloc_gpu_h"] for r in rules),
            "by_study": {s: sum(r["gpu_h"] for r in rules if r["study"] == s)
                         for s in sorted({r["study"] for r in rules})},
            "flagged": [r["rule"] for r in rules if any(f.startswith("PAST") for f in r["flags"])]}


# ---- output ------------------------------------------------------------------------------------
def _h(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:,.0f}" if x >= 100 else (f"{x:.1f}" if x >= 1 else f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def table(est: dict) -> str:
    from tabulate import tabulate

    g = est["gpu"]
    head = ["study", "rule", "jobs", "TFLOP / job (max)", "samples / job (largest items)",
            "GPU-h / job (max)", "GPU-h", "runtime min", "GPUs", "basis"]
    rows = []
    for r in est["rules"]:
        if not r["jobs"]:
            continue
        fmax = max(r["flops_per_job"]) if r["flops_per_job"] else 0
        per_job = max((j["gpu_s"] for j in est["jobs"] if j["rule"] == r["rule"]), default=0) / 3600
        rows.append([r["study"], r["rule"], r["jobs"], f"{fmax / 1e12:,.4g}" if fmax else "-",
                     r["samples"] or "-", _h(per_job), _h(r["gpu_h"]),
                     f"{r['runtime_min']:g}" if r["runtime_min"] else "-",
                     r["gpus"] or "-", r["basis"]])
    lines = [f"mmablate cost: {' + '.join(est['configfiles'])} (scale {est['scale']}) on "
             f"{g['name']} ({g['bf16_tflops']:g} TFLOP/s bf16 dense, {g['hbm_tbs']:g} TB/s; "
             f"{g['source']}) at MFU {est['mfu']:g}"
             + (f"; training rules at the throughput of {est['bench']}" if est["bench"] else ""),
             tabulate(rows, head, tablefmt="github"), ""]
    t = est["total"]
    lines.append(f"total: {t['jobs']} jobs, {_h(t['gpu_h'])} GPU-hours of work "
                 f"({_h(t['alloc_gpu_h'])} GPU-hours allocated: wall × GPUs requested); by study: "
                 + ", ".join(f"{s} {_h(v)}" for s, v in t["by_study"].items() if v))
    flags = [(r["rule"], f) for r in est["rules"] for f in r["flags"]]
    if flags:
        lines.append(f"against {est['profile']} (wall per job = work ÷ the job's ranks):")
        lines += [f"  {rule}: {f}" for rule, f in flags]
    else:
        lines.append(f"against {est['profile']}: every job fits its runtime")
    unpriced = [r["rule"] for r in est["rules"] if not r["priced"]]
    if unpriced:
        lines.append(f"not priced (no estimator or inputs unknown before the run): {unpriced}")
    if est["stand_ins"]:
        lines.append("planned without: " + "; ".join(est["stand_ins"]))
    lines.append("not in the figure: " + ", ".join(est["not_in_figure"]) +
                 ". Basis of each count: --json (jobs[].items[].basis); docs/cost.md.")
    return "\n".join(lines)


def add_arguments(p):
    p.add_argument("--configfile", nargs="*", default=None,
                   help="config overlays after config/config.yaml (default: "
                        "config/scales/paper.yaml)")
    p.add_argument("--gpu", default="H100",
                   help="GPU of the table (H100, H200, A100, L40S, …; 'auto' with --bench: its "
                        "device) or a name with --peak-tflops")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    p.add_argument("--bandwidth-tbs", type=float, default=None, help="override the bandwidth")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    p.add_argument("--bench", default=None, help="a `mmablate bench --json` result file")
    p.add_argument("--profile", default=None,
                   help="SLURM profile (default: profiles/slurm at paper scale, else "
                        "profiles/slurm-small)")
    p.add_argument("--far", type=float, default=10.0,
                   help="flag a runtime request ≥ this many times the estimate")
    p.add_argument("--json", default=None, help="also write the estimate here ('-': stdout only)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "mmablate" / "cost-flops.json"),
                   help="FLOP counts kept across runs (keyed by the library versions)")
    p.add_argument("--no-cache", action="store_true", help="count every model afresh")


def main(a):
    from . import models

    models.use_cache(None if a.no_cache else a.cache)
    overlays = a.configfile if a.configfile is not None else ["config/scales/paper.yaml"]
    est = estimate(["config/config.yaml", *overlays], a.gpu, a.mfu, a.bench, a.profile, a.far,
                   a.peak_tflops, a.bandwidth_tbs)
    if a.json == "-":
        print(json.dumps(est, indent=1, default=str))
        return est
    print(table(est))
    if a.json:
        Path(a.json).write_text(json.dumps(est, indent=1, default=str))
    return est
