#!/usr/bin/env bash
# Times the tiny RankCLIP run and splits it into training vs everything else.
#   bash benchmarks/pipeline_overhead.sh [extra snakemake args]
# Prints: total wall time, the sum of per-job wall times by rule (from results/benchmarks/*),
# the pure training time the jobs report (train_summary.json), and the no-op rerun time.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s.%N)
snakemake --cores 8 all "$@" > results_bench.log 2>&1
t1=$(date +%s.%N)
snakemake --cores 8 all -n "$@" > /dev/null 2>&1
t2=$(date +%s.%N)
python - "$t0" "$t1" "$t2" <<'PY'
import glob, json, sys, csv, collections
t0, t1, t2 = map(float, sys.argv[1:])
by_rule = collections.defaultdict(float); n = collections.Counter()
for f in glob.glob("results/benchmarks/**/*.tsv", recursive=True):
    rule = f.split("results/benchmarks/")[1].split("/")[0:2]
    rule = "/".join(rule) if rule[0] not in ("world", "collect", "table", "figure") else rule[0]
    with open(f) as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    by_rule[rule] += float(row["s"]); n[rule] += 1
train = sum(json.load(open(f))["wall_s"] for f in glob.glob("results/rankclip/train/*/*/train_summary.json"))
print(f"pipeline wall time      {t1 - t0:8.1f} s")
print(f"no-op rerun (dry run)   {t2 - t1:8.1f} s")
for r in sorted(by_rule):
    print(f"  {r:<22} {n[r]:3d} jobs  {by_rule[r]:8.1f} job-s")
tot = sum(by_rule.values())
print(f"sum of job wall times   {tot:8.1f} job-s; of which inside train() (data load + loop, after imports) {train:.1f} s "
      f"({100 * train / max(tot, 1e-9):.0f}%); the rest is interpreter start, imports, I/O, eval")
PY
