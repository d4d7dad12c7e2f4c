# sedm: style-extracting diffusion models for computational pathology.
# `snakemake --cores all` runs the demo (config.yaml); see README.md for your own cohort.
from snakemake.utils import min_version

min_version("9.0")


# One config truth: a run uses exactly the file given with --configfile (schema defaults for the keys it
# leaves out); the demo's config.yaml is read only when no --configfile is given, never merged under one.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tiling.smk"
include: "workflow/rules/autoencoder.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/synthesis.smk"
include: "workflow/rules/styles.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True
