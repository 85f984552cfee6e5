# Helpers of workflow/rules/pairrank.smk (kept apart: snakemake --lint).

# Quality-aware pair ranking (plan 000): Pick-a-Pic-style pairs → reward scores → quality
# ranking and selection → Diffusion-DPO (LoRA) → samples scored by the metric models. Each
# job's upstream files come from the one input function `upstream` (common.smk).
