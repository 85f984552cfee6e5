rule pairrank_world:
    input:
        cfg=stage_input("pairrank_world"),
        src=sources("world/preference.py", "world/scenes.py"),
    output:
        f"{R}/pairrank/world/{{h}}/summary.json",
    log:
        f"logs/pairrank/world/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/world/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-world --config {input.cfg} --out {output} > {log} 2>&1"


rule pairrank_base:
    input:
        unpack(upstream("pairrank_base")),
        cfg=stage_input("pairrank_base"),
        src=sources("studies/pairrank/diffusion.py", "data/pickapic.py", "models", "training",
                    "world/scenes.py"),
    output:
        f"{R}/pairrank/base/{{h}}/t2i.json",
    log:
        f"logs/pairrank/base/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/base/{{h}}.tsv"
    priority: 30  # UNet pretraining: every DPO/eval job of the study waits for it
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources("studies/pairrank/rewards.py", "studies/pairrank/image_reward.py",
                    "data/pickapic.py", "models",
                    "studies/pairrank/diffusion.py", "training", "world/scenes.py"),
    output:
        f"{R}/pairrank/reward/{{h}}/model.pt",
    log:
        f"logs/pairrank/reward/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/reward/{{h}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources("studies/pairrank/rewards.py", "studies/pairrank/image_reward.py",
                    "data/pickapic.py", "models",
                    "studies/pairrank/diffusion.py", "training", "world/scenes.py"),
    output:
        f"{R}/pairrank/score/{{h}}/scores.npz",
    log:
        f"logs/pairrank/score/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/score/{{h}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-score --config {input.cfg} --out {output}"
        " --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_select:
    input:
        unpack(upstream("pairrank_select")),
        cfg=stage_input("pairrank_select"),
        src=sources("studies/pairrank/selection.py", "data/pickapic.py"),
    output:
        f"{R}/pairrank/select/{{h}}/selection.json",
    log:
        f"logs/pairrank/select/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/select/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-select --config {input.cfg} --out {output} > {log} 2>&1"


rule pairrank_dpo:
    input:
        unpack(upstream("pairrank_dpo")),
        cfg=stage_input("pairrank_dpo"),
        src=sources("studies/pairrank/dpo.py", "studies/pairrank/diffusion.py", "data/pickapic.py",
                    "studies/pairrank/losses.py", "training", "models/clip.py", "models/tokenizer.py", "world/scenes.py"),
    output:
        f"{R}/pairrank/dpo/{{h}}/s{{seed}}/lora/adapter.pt",
    log:
        f"logs/pairrank/dpo/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/dpo/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
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
        src=sources("studies/pairrank/evaluate.py", "studies/pairrank/rewards.py",
                    "studies/pairrank/image_reward.py",
                    "studies/pairrank/diffusion.py", "studies/pairrank/dpo.py",
                    "studies/pairrank/losses.py", "world/preference.py", "data/pickapic.py",
                    "models/clip.py", "models/tokenizer.py", "training", "world/scenes.py"),
    output:
        json=f"{R}/pairrank/eval/{{h}}/s{{seed}}/metrics.json",
        grid=report(f"{R}/pairrank/eval/{{h}}/s{{seed}}/samples.png",
                    caption="../report/pairrank_samples.rst", category="Figures",
                    subcategory="pairrank samples"),
    log:
        f"logs/pairrank/eval/{{h}}/s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/eval/{{h}}/s{{seed}}.tsv"
    threads: COMPUTE_THREADS
    resources:
        gpu=GPU,
        torch_threads=TORCH_THREADS,
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-eval --config {input.cfg} --seed {wildcards.seed}"
        " --out {output.json} --grid {output.grid} --threads {resources.torch_threads} > {log} 2>&1"


rule pairrank_distfig:
    input:
        unpack(upstream("pairrank_distfig")),
        cfg=stage_input("pairrank_distfig"),
        src=sources("studies/pairrank/figures.py", "studies/pairrank/selection.py",
                    "data/pickapic.py", "studies/spec.py"),
    output:
        png=report(f"{R}/pairrank/distfig/{{h}}/quality_distributions.png",
                   caption="../report/pairrank_distributions.rst", category="Figures",
                   subcategory="pairrank"),
        pdf=f"{R}/pairrank/distfig/{{h}}/quality_distributions.pdf",
    log:
        f"logs/pairrank/distfig/{{h}}.log",
    benchmark:
        f"{R}/benchmarks/pairrank/distfig/{{h}}.tsv"
    conda:
        ENV
    shell:
        "python -m mmablate pairrank-distfig --config {input.cfg} --out {output.png} > {log} 2>&1"
