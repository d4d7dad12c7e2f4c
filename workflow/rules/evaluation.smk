# Per-patient evaluation of every arm on the test slides, with paired comparisons to the baseline arm.
from sedm.evaluation.layout_fidelity import baseline_arm, stain_robust_arm


rule evaluate:
    input:
        predictions=expand(paths.prediction, arm=ARMS, slide=TEST),
        samples=sample_sheet(),
        config=stage_cfg("evaluation"),
        styles=paths.style_table,
    output:
        eval_files(*EVAL_FILES),
    params:
        predictions=[f"{arm}={paths.prediction.format(arm=arm, slide=s)}" for arm in ARMS for s in TEST],
        out=lambda w, output: os.path.dirname(output[0]),
        # the test slides' labels; their stores are upstream of the predictions already
        stores=expand(paths.store, slide=TEST),
        rows=sheet_rows(TEST),  # patients of the test slides
    log:
        log_for("evaluate", "all"),
    benchmark:
        bench_for("evaluate", "all")
    conda:
        ENV
    shell:
        "sedm evaluate --config {input.config:q} --samples {input.samples:q} --predictions {params.predictions:q}"
        " --stores {params.stores:q} --styles {input.styles:q} --out {params.out:q} --log {log:q}"


# Synthetic tiles scored by the segmenter of an arm trained on real tiles only, against their layouts.
rule layout_fidelity:
    input:
        model=lambda w: paths.seg_model.format(arm=baseline_arm(config)),
        synthetic=expand(paths.synthetic, slide=UNLABELLED),
        config=seg_config(baseline_arm(config)),
        autoencoder=[paths.autoencoder] if config["diffusion"]["latent"] == "cohort" else [],
        robust=[paths.seg_model.format(arm=stain_robust_arm(config))] if stain_robust_arm(config) else [],
        # the references' real tiles: the segmenter's validation slides (labelled stores) and the style
        # patches they are restained with (unlabelled stores); both upstream of this job already
        stores=expand(paths.store, slide=LABELLED),
        style_stores=expand(paths.store, slide=UNLABELLED),
    output:
        paths.layout_fidelity,
    params:
        robust=lambda w, input: ["--stain-robust-model", *input.robust] if input.robust else [],
        # the ceiling of latent synthesis: the segmenter on the autoencoder's reconstructions of its
        # validation tiles
        autoencoder=lambda w, input: ["--autoencoder", *input.autoencoder] if input.autoencoder else [],
    threads: config["segmentation"]["threads"]
    resources:
        mem_mb=lambda w, attempt: config["segmentation"]["mem_mb"] * attempt,
        sedm_runtime=RUNTIME["segmentation"],
    log:
        log_for("layout_fidelity", "all"),
    benchmark:
        bench_for("layout_fidelity", "all")
    conda:
        ENV
    shell:
        "sedm layout-fidelity --config {input.config:q} --runtime {resources.sedm_runtime:q} --model {input.model:q}"
        " --synthetic {input.synthetic:q} {params.robust:q} {params.autoencoder:q} --stores {input.stores:q}"
        " --style-stores {input.style_stores:q} --out {output:q} --log {log:q}"
