rule pcclip_pairs:
    input:
        cfg=stage_input("pcclip_pairs"),
        src=sources("studies/pcclip/data.py", "world/pairs.py", "world/scenes.py"),
    output:
        f"{R}/pcclip/pairs/{{h}}/pairs.csv",
    log:
        f"logs/pcclip/pairs/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pcclip/pairs/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-pairs --config {input.cfg} --out {output} > {log} 2>&1"


rule pcclip_captioner:
    input:
        unpack(upstream("pcclip_captioner")),
        cfg=stage_input("pcclip_captioner"),
        src=sources("studies/pcclip/captioners.py", "studies/pcclip/data.py", "training",
                    "world/pairs.py", "world/scenes.py"),
    output:
        f"{R}/pcclip/captioner/{{h}}/summary.json",
    log:
        f"logs/pcclip/captioner/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pcclip/captioner/{{h}}.tsv"
    priority: 20  # the captioners: the captions, hence every finetune, wait for them
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources("studies/pcclip/captioners.py", "studies/pcclip/data.py",
                    "training", "world/pairs.py", "world/scenes.py"),
    output:
        f"{R}/pcclip/captions/{{h}}/captions.csv",
    log:
        f"logs/pcclip/captions/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pcclip/captions/{{h}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-captions --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pcclip_embed:
    input:
        unpack(upstream("pcclip_embed")),
        cfg=stage_input("pcclip_embed"),
        src=sources("studies/pcclip/finetune.py", "studies/pcclip/data.py", "models",
                    "data/imagetext.py", "studies/pcclip/losses.py", "training",
                    "world/pairs.py", "world/scenes.py"),
    output:
        f"{R}/pcclip/embed/{{h}}/s{{seed}}/embeddings.pt",
    log:
        f"logs/pcclip/embed/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/pcclip/embed/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-embed --config {input.cfg} --seed {wildcards.seed}"
        " --out {output} --threads {resources.torch_threads} > {log} 2>&1"


rule pcclip_finetune:
    input:
        unpack(upstream("pcclip_finetune")),
        cfg=stage_input("pcclip_finetune"),
        src=sources("studies/pcclip/finetune.py", "studies/pcclip/losses.py",
                    "studies/pcclip/data.py", "models", "training", "data/imagetext.py",
                    "world/pairs.py", "world/scenes.py"),
    output:
        f"{R}/pcclip/finetune/{{h}}/s{{seed}}/model.pt",
    params:
        embed=lambda w, input: f"--embed {input.embed}" if "embed" in input.keys() else "",
    log:
        f"logs/pcclip/finetune/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/pcclip/finetune/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources("studies/pcclip/evaluate.py", "studies/pcclip/finetune.py",
                    "studies/pcclip/losses.py", "studies/pcclip/data.py", "metrics/zeroshot.py",
                    "models", "data/imagetext.py", "training", "world/pairs.py",
                    "world/scenes.py"),
    output:
        f"{R}/pcclip/eval/{{h}}/s{{seed}}/metrics.json",
    params:
        model=lambda w, input: f"--model {input.model}" if "model" in input.keys() else "",
        embed=lambda w, input: f"--embed {input.embed}" if "embed" in input.keys() else "",
    log:
        f"logs/pcclip/eval/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/pcclip/eval/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate pcclip-eval --config {input.cfg} --seed {wildcards.seed}"
        " {params.model} {params.embed} --out {output} --threads {resources.torch_threads}"
        " > {log} 2>&1"
