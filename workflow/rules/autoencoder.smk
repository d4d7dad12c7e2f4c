# The cohort's own latent autoencoder (diffusion.latent: cohort), trained before the diffusion model on
# tissue crops of the labelled and unlabelled slides, never the test slides. As for the diffusion
# model, the run directory (checkpoints, train_log.csv) is not an output, so a preempted or failed
# job resumes; SIGTERM/SIGUSR1 checkpoint and exit 75.

AUTOENCODER = config["autoencoder"]


rule train_autoencoder:
    input:
        stores=expand(paths.store, slide=LABELLED),
        # unlabelled_fraction: 0 keeps new style sources zero-shot (the autoencoder never reads them)
        unlabelled=expand(paths.store, slide=UNLABELLED) if AUTOENCODER["unlabelled_fraction"] > 0 else [],
        config=stage_cfg("autoencoder"),
    output:
        model=directory(paths.autoencoder),
        qa=paths.autoencoder_qa,
        montage=paths.autoencoder_montage,
    params:
        run_dir=paths.autoencoder_run,
        unlabelled=lambda w, input: ["--unlabelled-stores", *input.unlabelled] if input.unlabelled else [],
    threads: AUTOENCODER["threads"]
    resources:
        gpu=min(AUTOENCODER["gpus"], 1),
        mem_mb=lambda w, attempt: AUTOENCODER["mem_mb"] * attempt,
        runtime=AUTOENCODER["runtime_min"],
        sedm_runtime=RUNTIME["autoencoder"],
    log:
        log_for("train_autoencoder", "model"),
    benchmark:
        bench_for("train_autoencoder", "model")
    conda:
        ENV
    shell:
        "sedm train-autoencoder --config {input.config:q} --runtime {resources.sedm_runtime:q} --stores {input.stores:q}"
        " {params.unlabelled:q} --out {output.model:q} --qa {output.qa:q} --montage {output.montage:q}"
        " --run-dir {params.run_dir:q} --resume auto --threads {threads} --log {log:q}"
