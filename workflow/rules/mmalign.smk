rule mmalign_data:
    input:
        cfg=stage_input("mmalign_data"),
        src=sources(f"{MMA_SRC}/worlddata.py", "world/scenes.py", "world/vqa.py"),
    output:
        f"{R}/mmalign/data/{{h}}/summary.json",
    log:
        f"logs/mmalign/data/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/data/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-data --config {input.cfg} --out {output} > {log} 2>&1"


rule mmalign_sft:
    input:
        unpack(upstream("mmalign_sft")),
        cfg=stage_input("mmalign_sft"),
        src=sources(f"{MMA_SRC}/sft.py", f"{MMA_SRC}/model.py", f"{MMA_SRC}/data.py", "training",
                    "data/imagetext.py", "world/scenes.py", "world/vqa.py"),
    output:
        f"{R}/mmalign/sft/{{h}}/summary.json",
    log:
        f"logs/mmalign/sft/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/sft/{{h}}.tsv"
    priority: 30  # the shared SFT base: every mmalign job waits for it (critical path)
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources(f"{MMA_SRC}/bdhs.py", f"{MMA_SRC}/model.py", f"{MMA_SRC}/judge.py",
                    f"{MMA_SRC}/data.py", f"{MMA_SRC}/protocols.py", "data/imagetext.py", "training/schedule.py",
                    "world/scenes.py", "world/vqa.py"),
    output:
        f"{R}/mmalign/bdhs/{{h}}/bdhs.jsonl",
    log:
        f"logs/mmalign/bdhs/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/bdhs/{{h}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-bdhs --config {input.cfg} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"


rule mmalign_dpo:
    input:
        unpack(upstream("mmalign_dpo")),
        cfg=stage_input("mmalign_dpo"),
        src=sources(f"{MMA_SRC}/dpo.py", f"{MMA_SRC}/trainer.py", f"{MMA_SRC}/evaluate.py",
                    f"{MMA_SRC}/judge.py", f"{MMA_SRC}/model.py", f"{MMA_SRC}/data.py",
                    f"{MMA_SRC}/protocols.py", "report/flags.py",
                    "world/vqa.py", "data/imagetext.py", "training", "world/scenes.py"),
    output:
        f"{R}/mmalign/dpo/{{h}}/s{{seed}}/metrics.json",
    log:
        f"logs/mmalign/dpo/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/dpo/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources(f"{MMA_SRC}/evaluate.py", f"{MMA_SRC}/judge.py", f"{MMA_SRC}/model.py",
                    f"{MMA_SRC}/data.py", f"{MMA_SRC}/protocols.py", "world/vqa.py",
                    "data/imagetext.py", "training/schedule.py", "world/scenes.py"),
    output:
        f"{R}/mmalign/eval/{{h}}/metrics.json",
    log:
        f"logs/mmalign/eval/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/eval/{{h}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources(f"{MMA_SRC}/evaluate.py", f"{MMA_SRC}/judge.py", f"{MMA_SRC}/model.py",
                    f"{MMA_SRC}/data.py", f"{MMA_SRC}/protocols.py", "world/vqa.py",
                    "data/imagetext.py", "training/schedule.py", "world/scenes.py",
                    f"{MMA_SRC}/preflight.py"),
    output:
        f"{R}/mmalign/bench/{{h}}/metrics.json",
    log:
        f"logs/mmalign/bench/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/bench/{{h}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-bench --config {input.cfg} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"


rule mmalign_merge:
    input:
        unpack(upstream("mmalign_merge")),
        cfg=stage_input("mmalign_merge"),
        src=sources(f"{MMA_SRC}/cli.py", "report/flags.py"),
    output:
        f"{R}/mmalign/merge/{{h}}/metrics.json",
    log:
        f"logs/mmalign/merge/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/mmalign/merge/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate mmalign-merge --config {input.cfg} --out {output} {input.records} > {log} 2>&1"
