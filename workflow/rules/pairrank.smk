# Each stage's output, log and benchmark are its output in mmablate.studies.spec (`P.output_pattern`,
# `stage_log`, `stage_benchmark`); its `src` input and GPU mark follow its command (common.smk).
rule pairrank_world:
    input:
        cfg=stage_input("pairrank_world"),
        src=stage_sources("pairrank-world"),
    output:
        P.output_pattern("pairrank_world"),
    log:
        stage_log("pairrank_world"),
    benchmark:
        stage_benchmark("pairrank_world")
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-world --config {input.cfg} --out {output} > {log} 2>&1"


rule pairrank_base:
    input:
        unpack(upstream("pairrank_base")),
        cfg=stage_input("pairrank_base"),
        src=stage_sources("pairrank-pretrain"),
    output:
        P.output_pattern("pairrank_base"),
    log:
        stage_log("pairrank_base"),
    benchmark:
        stage_benchmark("pairrank_base")
    priority: 30  # UNet pretraining: every DPO/eval job of the study waits for it
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pairrank-pretrain"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " pairrank-pretrain --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_reward:
    input:
        unpack(upstream("pairrank_reward")),
        cfg=stage_input("pairrank_reward"),
        src=stage_sources("pairrank-reward"),
    output:
        P.output_pattern("pairrank_reward"),
    log:
        stage_log("pairrank_reward"),
    benchmark:
        stage_benchmark("pairrank_reward")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pairrank-reward"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " pairrank-reward --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_score:
    input:
        unpack(upstream("pairrank_score")),
        cfg=stage_input("pairrank_score"),
        src=stage_sources("pairrank-score"),
    output:
        P.output_pattern("pairrank_score"),
    log:
        stage_log("pairrank_score"),
    benchmark:
        stage_benchmark("pairrank_score")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pairrank-score"),
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-score --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_select:
    input:
        unpack(upstream("pairrank_select")),
        cfg=stage_input("pairrank_select"),
        src=stage_sources("pairrank-select"),
    output:
        P.output_pattern("pairrank_select"),
    log:
        stage_log("pairrank_select"),
    benchmark:
        stage_benchmark("pairrank_select")
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-select --config {input.cfg} --out {output} > {log} 2>&1"


rule pairrank_dpo:
    input:
        unpack(upstream("pairrank_dpo")),
        cfg=stage_input("pairrank_dpo"),
        src=stage_sources("pairrank-dpo"),
    output:
        P.output_pattern("pairrank_dpo"),
    log:
        stage_log("pairrank_dpo"),
    benchmark:
        stage_benchmark("pairrank_dpo")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pairrank-dpo"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " pairrank-dpo --config {input.cfg} --seed {wildcards.seed}"
        " --out {output} --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_eval:
    input:
        unpack(upstream("pairrank_eval")),
        cfg=stage_input("pairrank_eval"),
        src=stage_sources("pairrank-eval"),
    output:
        json=P.output_pattern("pairrank_eval"),
        grid=report(P.output_pattern("pairrank_eval", "samples.png"),
                    caption="../report/pairrank_samples.rst", category="Figures",
                    subcategory="pairrank samples"),
    log:
        stage_log("pairrank_eval"),
    benchmark:
        stage_benchmark("pairrank_eval")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pairrank-eval"),
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-eval --config {input.cfg} --seed {wildcards.seed}"
        " --out {output.json} --grid {output.grid} --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_distfig:
    input:
        unpack(upstream("pairrank_distfig")),
        cfg=stage_input("pairrank_distfig"),
        src=stage_sources("pairrank-distfig"),
    output:
        png=report(P.output_pattern("pairrank_distfig"),
                   caption="../report/pairrank_distributions.rst", category="Figures",
                   subcategory="pairrank"),
        pdf=P.output_pattern("pairrank_distfig", "quality_distributions.pdf"),
    log:
        stage_log("pairrank_distfig"),
    benchmark:
        stage_benchmark("pairrank_distfig")
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-distfig --config {input.cfg} --out {output.png} > {log} 2>&1"
