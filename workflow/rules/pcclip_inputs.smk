# Helpers of workflow/rules/pcclip.smk (kept apart: snakemake --lint).

# PC-CLIP (plans 001, 002): pairs → captioner LMs → difference captions → (shared) image
# embeddings → finetuning per variant → evaluation. Logic in mmablate.studies.pcclip; each
# job's upstream files come from the one input function `upstream` (common.smk).
