# Helpers of workflow/rules/mmalign.smk (kept apart: snakemake --lint).

# The multimodal-LLM alignment study (plan 004): world data -> SFT base -> BDHS negatives ->
# per variant and seed DPO (BDHS γ, Mixed-DPO p) + benchmarks; the base model's benchmarks.
# Each job's upstream files come from the one input function `upstream` (common.smk).
