rule world:
    input:
        cfg=stage_input("world"),
        src=sources("world/__init__.py", "world/datasets.py", "world/scenes.py",
                    "data/shards.py"),
    output:
        f"{R}/world/{{h}}/summary.json",
    log:
        f"logs/world/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/world/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate world --config {input.cfg} --out {output} > {log} 2>&1"
