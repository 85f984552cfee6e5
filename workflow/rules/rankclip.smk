# Each stage's output, log and benchmark are its output in mmablate.studies.spec (`P.output_pattern`,
# `stage_log`, `stage_benchmark`); its `src` input and GPU mark follow its command (common.smk).
rule rankclip_train:
    input:
        unpack(upstream("rankclip_train")),
        cfg=stage_input("rankclip_train"),
        src=stage_sources("rankclip-train"),
    output:
        P.output_pattern("rankclip_train"),
    log:
        stage_log("rankclip_train"),
    benchmark:
        stage_benchmark("rankclip_train")
    priority: 10  # includes the shared world CLIP that PC-CLIP and pair ranking start from
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("rankclip-train"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " rankclip-train --config {input.cfg} --seed {wildcards.seed}"
        " --out {output} --threads {resources.torch_threads} > {log} 2>&1"


rule rankclip_eval:
    input:
        unpack(upstream("rankclip_eval")),
        cfg=stage_input("rankclip_eval"),
        src=stage_sources("rankclip-eval"),
    output:
        P.output_pattern("rankclip_eval"),
    log:
        stage_log("rankclip_eval"),
    benchmark:
        stage_benchmark("rankclip_eval")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("rankclip-eval"),
    conda:
        ENV
    shell:
        "python -m mmablate rankclip-eval --config {input.cfg} --model {input.model}"
        " --seed {wildcards.seed} --out {output} --threads {resources.torch_threads} > {log} 2>&1"
