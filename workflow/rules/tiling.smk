# Slides -> one Zarr v3 store + tile table per slide, then a cohort-wide summary.


rule tile_slide:
    input:
        slide=slide_input,
        annotation=annotation_input,
        config=stage_cfg("tiling"),
    output:
        store=directory(paths.store),
        table=paths.tile_table,
        qc=paths.tissue_qc,
    params:
        annotation=lambda w, input: ["--annotation", input.annotation[0]] if input.annotation else [],
    threads: config["tiling"]["threads"]
    resources:
        mem_mb=lambda w, attempt: config["tiling"]["mem_mb"] * attempt,
    log:
        log_for("tile_slide"),
    benchmark:
        bench_for("tile_slide")
    conda:
        ENV
    shell:
        "sedm tile --config {input.config:q} --slide-id {wildcards.slide:q} --slide {input.slide:q}"
        " {params.annotation:q} --threads {threads} --out {output.store:q} --table {output.table:q}"
        " --qc {output.qc:q} --log {log:q}"


rule tiling_summary:
    input:
        tables=expand(paths.tile_table, slide=SLIDES),
        samples=sample_sheet(),
    output:
        paths.tiling_summary,
    params:
        rows=sheet_rows(SLIDES),
    log:
        log_for("tiling_summary", "all"),
    benchmark:
        bench_for("tiling_summary", "all")
    conda:
        ENV
    shell:
        "sedm tiling-summary --samples {input.samples:q} --tables {input.tables:q} --out {output:q} --log {log:q}"
