# Per-stage config snapshots: a stage reruns when (and only when) the sections it reads change.
# Writing one is instant, so on a cluster it runs on the submit host instead of waiting in the queue;
# it has no benchmark: for the same reason.

localrules:
    stage_config,


rule stage_config:
    output:
        paths.stage_config,
    params:
        snapshot=lambda w: json.dumps(stage_config(config, w.stage), sort_keys=True),
    log:
        log_for("stage_config", "{stage}"),
    conda:
        ENV
    shell:
        "sedm write-config --stage {wildcards.stage:q} --json {params.snapshot:q} --out {output:q} --log {log:q}"
