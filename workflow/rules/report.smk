# Tidy metrics, tables and figures: per ablation, so a changed variant reruns only its tables.
# Seconds of work each: on a cluster (profiles/slurm) they run on the submitting node.
localrules: collect, table, figure, metrics_all


rule collect:
    input:
        ablation=f"{R}/configs/ablation/{{ab}}.json",
        evals=lambda w: P.ablation_evals(w.ab),
        src=stage_sources("collect"),
    output:
        f"{R}/ablations/{{ab}}/metrics.csv",
    log:
        f"logs/collect/{{ab}}.log",
    benchmark:
        f"{R}/benchmarks/collect/{{ab}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate collect --ablation {input.ablation} --out {output} > {log} 2>&1"


rule table:
    input:
        ablation=f"{R}/configs/ablation/{{ab}}.json",
        metrics=f"{R}/ablations/{{ab}}/metrics.csv",
        evals=lambda w: P.ablation_evals(w.ab),  # the records: collapse and identical-output notes
        src=stage_sources("table"),
    output:
        md=f"{R}/tables/{{ab}}.md",
        tex=f"{R}/tables/{{ab}}.tex",
        csv=report(f"{R}/tables/{{ab}}.csv", caption="../report/table.rst", category="Tables",
                   subcategory="{ab}"),
    log:
        f"logs/table/{{ab}}.log",
    benchmark:
        f"{R}/benchmarks/table/{{ab}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate table --ablation {input.ablation} --metrics {input.metrics}"
        " --md {output.md} --tex {output.tex} --csv {output.csv} > {log} 2>&1"


rule figure:
    input:
        ablation=f"{R}/configs/ablation/{{ab}}.json",
        metrics=f"{R}/ablations/{{ab}}/metrics.csv",
        src=stage_sources("figure"),
    output:
        png=report(f"{R}/figures/{{ab}}.png", caption="../report/figure.rst", category="Figures",
                   subcategory="{ab}"),
        pdf=f"{R}/figures/{{ab}}.pdf",
    log:
        f"logs/figure/{{ab}}.log",
    benchmark:
        f"{R}/benchmarks/figure/{{ab}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate figure --ablation {input.ablation} --metrics {input.metrics}"
        " --png {output.png} --pdf {output.pdf} > {log} 2>&1"


rule metrics_all:
    input:
        csvs=[f"{R}/ablations/{a.name}/metrics.csv" for a in P.ablations],
        src=stage_sources("concat"),
    output:
        f"{R}/metrics.csv",
    log:
        "logs/metrics_all.log",
    benchmark:
        f"{R}/benchmarks/metrics_all.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate concat --out {output} {input.csvs} > {log} 2>&1"
