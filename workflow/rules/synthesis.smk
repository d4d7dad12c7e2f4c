# Synthetic labelled data in the style of every unlabelled slide: layouts from the labelled slides,
# style patches from the unlabelled slide, one job per unlabelled slide. A killed job resumes from
# its finished shards (kept in <store>.partial/, deliberately not an output) and exits 75 on SIGTERM.
from sedm.synthesis.counts import samples_for_slide

try:
    SYNTHESIS_SAMPLES = {s: samples_for_slide(config["synthesis"], s, UNLABELLED) for s in UNLABELLED}
except InputError as exc:
    raise WorkflowError(str(exc)) from None


rule synthesize:
    input:
        model=paths.diffusion_model,
        store=paths.store,
        config=stage_cfg("synthesis"),
    output:
        store=directory(paths.synthetic),
        montage=paths.synthesis_montage,
        stats=paths.synthesis_stats,
    wildcard_constraints:
        slide="|".join(UNLABELLED) or "^$",
    params:
        n=lambda w: SYNTHESIS_SAMPLES[w.slide],
        # layouts come from the labelled stores; not inputs, because the model above already depends
        # on every one of them (a re-tiled labelled slide retrains the model, which reruns this), and
        # 2 x |labelled| inputs per unlabelled slide made the DAG of large cohorts slow to build
        labelled=expand(paths.store, slide=LABELLED),
    threads: config["synthesis"]["threads"]
    resources:
        gpu=config["synthesis"]["gpus"],
        mem_mb=lambda w, attempt: config["synthesis"]["mem_mb"] * attempt,
        sedm_runtime=RUNTIME["synthesis"],
    log:
        log_for("synthesize"),
    benchmark:
        bench_for("synthesize")
    conda:
        ENV
    shell:
        "sedm synthesize --config {input.config:q} --runtime {resources.sedm_runtime:q} --model {input.model:q} --style-store {input.store:q}"
        " --labelled {params.labelled:q} --n-samples {params.n:q} --threads {threads}"
        " --out {output.store:q} --montage {output.montage:q} --stats {output.stats:q} --log {log:q}"


# Memorisation check, one job per synthetic set: each synthetic tile's nearest tile-sized window of
# the labelled slides (stain-blind structure features, 8 flips/turns) against real-to-real nearest
# distances; near-copies counted (sedm/synthesis/memorisation.py). Numpy only, no model.
rule near_copies:
    input:
        synthetic=paths.synthetic,
        config=stage_cfg("synthesis"),
    output:
        paths.memorisation,
    wildcard_constraints:
        slide="|".join(UNLABELLED) or "^$",
    params:
        # the training slides the tiles are compared with; not inputs: the synthetic store already
        # depends on every one of them through the model (see synthesize)
        labelled=expand(paths.store, slide=LABELLED),
    threads: 1
    resources:
        sedm_runtime=RUNTIME["synthesis"],
    log:
        log_for("near_copies"),
    benchmark:
        bench_for("near_copies")
    conda:
        ENV
    shell:
        "sedm near-copies --config {input.config:q} --runtime {resources.sedm_runtime:q} --synthetic {input.synthetic:q}"
        " --labelled {params.labelled:q} --threads {threads} --out {output:q} --log {log:q}"


# How far the model takes style from its style patches, on the unlabelled slides (never trained on).
rule style_check:
    input:
        model=paths.diffusion_model,
        stores=expand(paths.store, slide=UNLABELLED),
        config=stage_cfg("synthesis"),
    output:
        json=paths.style_check,
        grid=paths.style_grid,
    params:
        labelled=expand(paths.store, slide=LABELLED),  # the model already depends on them (see synthesize)
    threads: config["synthesis"]["threads"]
    resources:
        gpu=config["synthesis"]["gpus"],
        mem_mb=lambda w, attempt: config["synthesis"]["mem_mb"] * attempt,
        sedm_runtime=RUNTIME["synthesis"],
    log:
        log_for("style_check", "style_check"),
    benchmark:
        bench_for("style_check", "style_check")
    conda:
        ENV
    shell:
        "sedm style-check --config {input.config:q} --runtime {resources.sedm_runtime:q} --model {input.model:q}"
        " --labelled {params.labelled:q} --style-stores {input.stores:q} --out {output.json:q}"
        " --grid {output.grid:q} --log {log:q}"
