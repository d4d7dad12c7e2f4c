# Per-patient evaluation of every arm on the test slides, with paired comparisons to the baseline arm.


rule evaluate:
    input:
        predictions=expand(paths.prediction, arm=ARMS, slide=TEST),
        samples=config["samples"],
        config=stage_cfg("evaluation"),
    output:
        eval_files(*EVAL_FILES),
    params:
        predictions=[f"{arm}={paths.prediction.format(arm=arm, slide=s)}" for arm in ARMS for s in TEST],
        out=lambda w, output: os.path.dirname(output[0]),
        # the test slides' labels; their stores are upstream of the predictions already
        stores=expand(paths.store, slide=TEST),
    log:
        log_for("evaluate", "all"),
    benchmark:
        bench_for("evaluate", "all")
    conda:
        ENV
    shell:
        "sedm evaluate --config {input.config:q} --samples {input.samples:q} --predictions {params.predictions:q}"
        " --stores {params.stores:q} --out {params.out:q} 2> {log:q}"
