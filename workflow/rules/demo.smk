# The synthetic demo cohort: the sample sheet's slides under demo.out are generated, one job each.

if config["demo"]["enabled"]:
    DEMO_SLIDES = [s for s in SLIDES if SAMPLES.loc[s, "slide_path"].startswith(config["demo"]["out"] + "/")]

    rule demo_cohort:
        input:
            samples=config["samples"],
            config=stage_cfg("demo"),
        output:
            slide=config["demo"]["out"] + "/slides/{slide}.tiff",
            annotation=config["demo"]["out"] + "/annotations/{slide}.geojson",
        log:
            log_for("demo_cohort"),
        conda:
            ENV
        shell:
            "sedm demo-cohort --config {input.config:q} --samples {input.samples:q} --slide {wildcards.slide:q}"
            " --out {config[demo][out]:q} 2> {log:q}"
