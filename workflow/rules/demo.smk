# The synthetic demo cohort: the sample sheet's slides under demo.out are generated, one job each.

if config["demo"]["enabled"]:
    rule demo_cohort:
        input:
            samples=sample_sheet(),
            config=stage_cfg("demo"),
        output:
            slide=paths.demo_slide,
            annotation=paths.demo_annotation,
        params:
            rows=lambda w: sheet_rows([w.slide]),
            out=lambda w, output: Path(output.slide).parent.parent,
        log:
            log_for("demo_cohort"),
        benchmark:
            bench_for("demo_cohort")
        conda:
            ENV
        shell:
            "sedm demo-cohort --config {input.config:q} --samples {input.samples:q} --slide {wildcards.slide:q}"
            " --out {params.out:q} --log {log:q}"
