# Styles: whole-slide stain statistics per slide (dask over the store; its own job, rerun only when
# the store changes), the same statistics of each synthetic set, the diffusion model's style vectors
# per slide once the model exists, and the cohort table the evaluation and the report read.



rule slide_style:
    input:
        store=paths.store,
    output:
        paths.slide_style,
    threads: config["styles"]["threads"]
    resources:
        mem_mb=lambda w, attempt: config["styles"]["mem_mb"] * attempt,
    log:
        log_for("slide_style"),
    benchmark:
        bench_for("slide_style")
    conda:
        ENV
    shell:
        "sedm style-stats --store {input.store:q} --out {output:q} --threads {threads} --log {log:q}"


rule synthetic_style:
    input:
        store=paths.synthetic,
    output:
        paths.synthetic_style,
    wildcard_constraints:
        slide="|".join(UNLABELLED) or "^$",
    threads: config["styles"]["threads"]
    resources:
        mem_mb=lambda w, attempt: config["styles"]["mem_mb"] * attempt,
    log:
        log_for("synthetic_style"),
    benchmark:
        bench_for("synthetic_style")
    conda:
        ENV
    shell:
        "sedm style-stats --store {input.store:q} --out {output:q} --threads {threads} --log {log:q}"


rule style_embedding:
    input:
        model=paths.diffusion_model,
        store=paths.store,
        config=stage_cfg("styles"),
    output:
        paths.slide_embedding,
    threads: config["styles"]["threads"]
    resources:
        mem_mb=lambda w, attempt: config["styles"]["mem_mb"] * attempt,
        sedm_runtime=RUNTIME["styles"],
    log:
        log_for("style_embedding"),
    benchmark:
        bench_for("style_embedding")
    conda:
        ENV
    shell:
        "sedm style-embedding --config {input.config:q} --runtime {resources.sedm_runtime:q} --model {input.model:q}"
        " --store {input.store:q} --out {output:q} --log {log:q}"


rule style_table:
    input:
        unpack(style_table_inputs),
    output:
        paths.style_table,
    params:
        synthetic=lambda w, input: input.get("synthetic", []),
        embeddings=lambda w, input: input.get("embeddings", []),
        rows=sheet_rows(SLIDES),  # slide roles and patients
    log:
        log_for("style_table", "all"),
    benchmark:
        bench_for("style_table", "all")
    conda:
        ENV
    shell:
        "sedm style-table --samples {input.samples:q} --stats {input.stats:q} --synthetic {params.synthetic:q}"
        " --embeddings {params.embeddings:q} --out {output:q} --log {log:q}"
