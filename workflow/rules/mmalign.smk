# Each stage's output, log and benchmark are its output in mmablate.studies.spec (`P.output_pattern`,
# `stage_log`, `stage_benchmark`); its `src` input and GPU mark follow its command (common.smk).
rule mmalign_data:
    input:
        cfg=stage_input("mmalign_data"),
        src=stage_sources("mmalign-data"),
    output:
        P.output_pattern("mmalign_data"),
    log:
        stage_log("mmalign_data"),
    benchmark:
        stage_benchmark("mmalign_data")
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-data --config {input.cfg} --out {output} > {log} 2>&1"


rule mmalign_sft:
    input:
        unpack(upstream("mmalign_sft")),
        cfg=stage_input("mmalign_sft"),
        src=stage_sources("mmalign-sft"),
    output:
        P.output_pattern("mmalign_sft"),
    log:
        stage_log("mmalign_sft"),
    benchmark:
        stage_benchmark("mmalign_sft")
    priority: 30  # the shared SFT base: every mmalign job waits for it (critical path)
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("mmalign-sft"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " mmalign-sft --config {input.cfg} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"


rule mmalign_bdhs:
    input:
        unpack(upstream("mmalign_bdhs")),
        cfg=stage_input("mmalign_bdhs"),
        src=stage_sources("mmalign-bdhs"),
    output:
        P.output_pattern("mmalign_bdhs"),
    log:
        stage_log("mmalign_bdhs"),
    benchmark:
        stage_benchmark("mmalign_bdhs")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("mmalign-bdhs"),
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-bdhs --config {input.cfg} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"


rule mmalign_dpo:
    input:
        unpack(upstream("mmalign_dpo")),
        cfg=stage_input("mmalign_dpo"),
        src=stage_sources("mmalign-dpo"),
    output:
        P.output_pattern("mmalign_dpo"),
    log:
        stage_log("mmalign_dpo"),
    benchmark:
        stage_benchmark("mmalign_dpo")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("mmalign-dpo"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " mmalign-dpo --config {input.cfg} --seed {wildcards.seed}"
        " --out {output} --threads {resources.torch_threads} > {log} 2>&1"


rule mmalign_eval:
    input:
        unpack(upstream("mmalign_eval")),
        cfg=stage_input("mmalign_eval"),
        src=stage_sources("mmalign-eval"),
    output:
        P.output_pattern("mmalign_eval"),
    log:
        stage_log("mmalign_eval"),
    benchmark:
        stage_benchmark("mmalign_eval")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("mmalign-eval"),
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-eval --config {input.cfg} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"


# merging JSON records takes a second: on a cluster it runs on the submitting node
localrules: mmalign_merge


rule mmalign_bench:
    input:
        unpack(upstream("mmalign_bench")),
        cfg=stage_input("mmalign_bench"),
        src=stage_sources("mmalign-bench"),
    output:
        P.output_pattern("mmalign_bench"),
    log:
        stage_log("mmalign_bench"),
    benchmark:
        stage_benchmark("mmalign_bench")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("mmalign-bench"),
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-bench --config {input.cfg} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"


rule mmalign_merge:
    input:
        unpack(upstream("mmalign_merge")),
        cfg=stage_input("mmalign_merge"),
        src=stage_sources("mmalign-merge"),
    output:
        P.output_pattern("mmalign_merge"),
    log:
        stage_log("mmalign_merge"),
    benchmark:
        stage_benchmark("mmalign_merge")
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-merge --config {input.cfg} --out {output} {input.records} > {log} 2>&1"
