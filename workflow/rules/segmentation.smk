# Segmentation arms: one model per arm (real / stain-augmented / + synthetic data; a synthetic arm once per
# share of a sweep, sedm.arms), then every test slide segmented by every arm.
from sedm.arms import arm_snapshot


wildcard_constraints:
    arm="|".join(ARMS),


# A sweep's per-arm snapshots (common.smk seg_config): instant, like the stage snapshots (config.smk).
localrules:
    arm_config,


rule arm_config:
    output:
        paths.arm_config,
    params:
        snapshot=lambda w: json.dumps(arm_snapshot(stage_config(config, "segmentation"), w.arm), sort_keys=True),
    log:
        log_for("arm_config", "{arm}"),
    conda:
        ENV
    shell:
        "sedm write-config --stage segmentation --json {params.snapshot:q} --out {output:q} --log {log:q}"


rule train_segmentation:
    input:
        stores=expand(paths.store, slide=LABELLED),
        samples=sample_sheet(),
        # synthetic arms: the synthesis stores of all unlabelled slides (rule synthesize)
        synthetic=lambda w: (
            expand(paths.synthetic, slide=UNLABELLED) if ARM_VARIANTS[w.arm].synthetic else []
        ),
        config=lambda w: seg_config(w.arm),
    output:
        model=directory(paths.seg_model),
    params:
        run_dir=lambda w: paths.seg_run.format(arm=w.arm),
        synthetic=lambda w, input: ["--synthetic", *input.synthetic] if input.synthetic else [],
        one_gpu=one_gpu,
        # the labelled slides' rows (patients for the validation split), and the unlabelled slides'
        # for an arm that trains on their synthetic data: a new test slide retrains no arm
        rows=lambda w: sheet_rows(LABELLED + (UNLABELLED if ARM_VARIANTS[w.arm].synthetic else [])),
    threads: config["segmentation"]["threads"]
    resources:
        gpu=config["segmentation"]["gpus"],
        sedm_runtime=RUNTIME["segmentation"],
        mem_mb=lambda w, attempt: config["segmentation"]["mem_mb"] * attempt,
    log:
        log_for("train_segmentation", "{arm}"),
    benchmark:
        bench_for("train_segmentation", "{arm}")
    conda:
        ENV
    shell:
        "sedm train-seg --config {input.config:q} --runtime {resources.sedm_runtime:q} --arm {wildcards.arm:q} --stores {input.stores:q}"
        " --samples {input.samples:q} {params.synthetic:q} --out {output.model:q}"
        " --run-dir {params.run_dir:q} --resume auto --threads {threads} --log {log:q}"


rule predict_slide:
    input:
        model=paths.seg_model,
        store=paths.store,
        config=lambda w: seg_config(w.arm),
    output:
        prediction=directory(paths.prediction),
        overlay=paths.prediction_overlay,
        geojson=paths.prediction_geojson,
    params:
        one_gpu=one_gpu,
    threads: config["segmentation"]["threads"]
    resources:
        gpu=config["segmentation"]["gpus"],
        sedm_runtime=RUNTIME["segmentation"],
    log:
        log_for("predict_slide", "{arm}/{slide}"),
    benchmark:
        bench_for("predict_slide", "{arm}/{slide}")
    conda:
        ENV
    shell:
        "sedm predict --config {input.config:q} --runtime {resources.sedm_runtime:q} --model {input.model:q} --store {input.store:q}"
        " --out {output.prediction:q} --overlay {output.overlay:q} --geojson {output.geojson:q}"
        " --threads {threads} --log {log:q}"
