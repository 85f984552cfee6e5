# Input functions and helpers of workflow/rules/pairrank.smk (kept apart: snakemake --lint).

# Quality-aware pair ranking (plan 000): Pick-a-Pic-style pairs → reward scores → quality
# ranking and selection → Diffusion-DPO (LoRA) → samples scored by the metric models.
from mmablate.studies.pairrank.pipeline import upstream as pairrank_upstream


def pairrank_in(stage):
    return lambda w: pairrank_upstream(P, P.stage(stage, w.h))


