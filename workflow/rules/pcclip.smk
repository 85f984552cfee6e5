# Each stage's output, log and benchmark are its output in mmablate.studies.spec (`P.output_pattern`,
# `stage_log`, `stage_benchmark`); its `src` input and GPU mark follow its command (common.smk).
rule pcclip_pairs:
    input:
        cfg=stage_input("pcclip_pairs"),
        src=stage_sources("pcclip-pairs"),
    output:
        P.output_pattern("pcclip_pairs"),
    log:
        stage_log("pcclip_pairs"),
    benchmark:
        stage_benchmark("pcclip_pairs")
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-pairs --config {input.cfg} --out {output} > {log} 2>&1"


rule pcclip_captioner:
    input:
        unpack(upstream("pcclip_captioner")),
        cfg=stage_input("pcclip_captioner"),
        src=stage_sources("pcclip-captioner"),
    output:
        P.output_pattern("pcclip_captioner"),
    log:
        stage_log("pcclip_captioner"),
    benchmark:
        stage_benchmark("pcclip_captioner")
    priority: 20  # the captioners: the captions, hence every finetune, wait for them
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pcclip-captioner"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " pcclip-captioner --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pcclip_captions:
    input:
        unpack(upstream("pcclip_captions")),
        cfg=stage_input("pcclip_captions"),
        src=stage_sources("pcclip-captions"),
    output:
        P.output_pattern("pcclip_captions"),
    log:
        stage_log("pcclip_captions"),
    benchmark:
        stage_benchmark("pcclip_captions")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pcclip-captions"),
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-captions --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pcclip_embed:
    input:
        unpack(upstream("pcclip_embed")),
        cfg=stage_input("pcclip_embed"),
        src=stage_sources("pcclip-embed"),
    output:
        P.output_pattern("pcclip_embed"),
    log:
        stage_log("pcclip_embed"),
    benchmark:
        stage_benchmark("pcclip_embed")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pcclip-embed"),
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-embed --config {input.cfg} --seed {wildcards.seed}"
        " --out {output} --threads {resources.torch_threads} > {log} 2>&1"


rule pcclip_finetune:
    input:
        unpack(upstream("pcclip_finetune")),
        cfg=stage_input("pcclip_finetune"),
        src=stage_sources("pcclip-finetune"),
    output:
        P.output_pattern("pcclip_finetune"),
    params:
        embed=lambda w, input: f"--embed {input.embed}" if "embed" in input.keys() else "",
    log:
        stage_log("pcclip_finetune"),
    benchmark:
        stage_benchmark("pcclip_finetune")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pcclip-finetune"),
    conda:
        ENV
    shell:
        "python -m mmablate launch --nproc {resources.gpu} --log-dir {log}.ranks --"
        " pcclip-finetune --config {input.cfg} --seed {wildcards.seed}"
        " --captions {input.captions} {params.embed} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pcclip_eval:
    input:
        unpack(upstream("pcclip_eval")),
        cfg=stage_input("pcclip_eval"),
        src=stage_sources("pcclip-eval"),
    output:
        P.output_pattern("pcclip_eval"),
    params:
        model=lambda w, input: f"--model {input.model}" if "model" in input.keys() else "",
        embed=lambda w, input: f"--embed {input.embed}" if "embed" in input.keys() else "",
    log:
        stage_log("pcclip_eval"),
    benchmark:
        stage_benchmark("pcclip_eval")
    threads: COMPUTE_THREADS
    resources:
        **compute_resources("pcclip-eval"),
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-eval --config {input.cfg} --seed {wildcards.seed}"
        " {params.model} {params.embed} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"
