# Input functions and helpers of workflow/rules/mmalign.smk (kept apart: snakemake --lint).

# The multimodal-LLM alignment study (plan 004): world data -> SFT base -> BDHS negatives ->
# per variant and seed DPO (BDHS γ, Mixed-DPO p) + benchmarks; the base model's benchmarks.
MMA_SRC = "studies/mmalign"


def mmalign_world_input(stage):
    """The world summary a job needs (nothing when its data are real files)."""

    def f(w):
        cfg = P.stage(stage, w.h)
        scenes = cfg.get("scenes") or (cfg.get("eval") or {}).get("scenes")
        return [str(Path(scenes).parent / "summary.json")] if scenes else []

    return f


def mmalign_sft_input(stage):
    def f(w):
        sh = P.stage(stage, w.h).get("sft")
        return [f"{R}/mmalign/sft/{sh}/summary.json"] if sh else []

    return f


def mmalign_bdhs_input(w):
    bh = P.stage("mmalign_dpo", w.h).get("bdhs_stage")
    return [f"{R}/mmalign/bdhs/{bh}/bdhs.jsonl"] if bh else []


