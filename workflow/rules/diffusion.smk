# The layout+style conditioned diffusion model (STEDM), trained on the labelled slides only.
# The run directory (checkpoints, train_log.csv, preview grids) is deliberately not an output:
# Snakemake deletes the outputs of failed jobs, and checkpoints must survive a preempted or failed
# job so that the rerun resumes (`--resume auto`; a checkpoint is only resumed when the config and
# the stores match). On SIGTERM/SIGUSR1 the trainer checkpoints and exits 75, so `--retries` or a
# SLURM requeue continues the run.

DIFFUSION = config["diffusion"]


rule train_diffusion:
    input:
        stores=expand(paths.store, slide=LABELLED),
        unlabelled=expand(paths.store, slide=UNLABELLED) if DIFFUSION["use_unlabelled"] else [],
        config=stage_cfg("diffusion"),
        autoencoder=[paths.autoencoder] if DIFFUSION["latent"] == "cohort" else [],
    output:
        directory(paths.diffusion_model),
    params:
        run_dir=paths.diffusion_run,
        autoencoder=lambda w, input: ["--autoencoder", *input.autoencoder] if input.autoencoder else [],
        unlabelled=lambda w, input: ["--unlabelled-stores", *input.unlabelled] if input.unlabelled else [],
    threads: DIFFUSION["threads"]
    resources:
        gpu=DIFFUSION["gpus"],
        mem_mb=lambda w, attempt: DIFFUSION["mem_mb"] * attempt,
        runtime=DIFFUSION["runtime_min"],
        sedm_runtime=RUNTIME["diffusion"],
    log:
        log_for("train_diffusion", "model"),
    benchmark:
        bench_for("train_diffusion", "model")
    conda:
        ENV
    shell:
        # --gpus > 1 (diffusion.gpus or a profile's set-resources): one DDP process per GPU via torchrun
        "sedm train-diffusion --config {input.config:q} --runtime {resources.sedm_runtime:q} --stores {input.stores:q}"
        " {params.unlabelled:q} {params.autoencoder:q} --out {output:q} --run-dir {params.run_dir:q} --resume auto"
        " --threads {threads} --gpus {resources.gpu} --log {log:q}"
