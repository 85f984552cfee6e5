# The world stage's output, log and benchmark are its output in mmablate.pipeline.WORLD_OUTPUTS
# (`P.output_pattern`, `stage_log`, `stage_benchmark`); its `src` input follows its command (common.smk).
rule world:
    input:
        cfg=stage_input("world"),
        src=stage_sources("world"),
    output:
        P.output_pattern("world"),
    log:
        stage_log("world"),
    benchmark:
        stage_benchmark("world")
    conda:
        ENV
    shell:
        "python -m mmablate world --config {input.cfg} --out {output} > {log} 2>&1"
