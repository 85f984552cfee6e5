# mmablate — the ablation studies of four multimodal-alignment papers, end to end.
#   snakemake --cores 8 all                                      (tiny scale: the default)
#   snakemake --cores 8 all --configfile config/scales/smoke.yaml
# Logic lives in src/mmablate (every rule calls `python -m mmablate ...`); see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# The config is validated once, in workflow/rules/common.smk (mmablate.pipeline: the schema
# workflow/schemas/config.schema.yaml, then each study's checks), with errors naming the
# config file(s) and the dotted key.


include: "workflow/rules/common.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/rankclip.smk"
include: "workflow/rules/pcclip_inputs.smk"
include: "workflow/rules/pcclip.smk"
include: "workflow/rules/pairrank_inputs.smk"
include: "workflow/rules/pairrank.smk"
include: "workflow/rules/mmalign_inputs.smk"
include: "workflow/rules/mmalign.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        P.targets(),
    default_target: True
