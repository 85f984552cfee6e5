rule rankclip_train:
    input:
        unpack(upstream("rankclip_train")),
        cfg=stage_input("rankclip_train"),
        src=sources("studies/rankclip/losses.py", "studies/rankclip/train.py", "models",
                    "data/imagetext.py", "data/shards.py", "training",
                    "world/scenes.py"),
    output:
        f"{R}/rankclip/train/{{h}}/s{{seed}}/model.pt",
    log:
        f"logs/rankclip/train/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/rankclip/train/{{h}}/s{{seed}}.tsv"
    priority: 10  # includes the shared world CLIP that PC-CLIP and pair ranking start from
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources("studies/rankclip/evaluate.py", "metrics/zeroshot.py", "models",
                    "data/imagetext.py", "training/schedule.py", "world/scenes.py"),
    output:
        f"{R}/rankclip/eval/{{h}}/s{{seed}}/metrics.json",
    log:
        f"logs/rankclip/eval/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/rankclip/eval/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate rankclip-eval --config {input.cfg} --model {input.model}"
        " --seed {wildcards.seed} --out {output} --threads {resources.torch_threads} > {log} 2>&1"
