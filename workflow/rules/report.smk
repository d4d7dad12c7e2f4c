# The HTML report over everything above, plus its figures as PNGs for `snakemake --report`.
# The report reads stage outputs by the fixed results layout (sedm/layout.py); the inputs
# below only make it wait for them. Benchmark files are read too (compute table, cost beside gain)
# but are no rule's output.
report: "../report/workflow.rst"


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(paths.report_html, caption="../report/report.rst", category="Report"),
        figures=report(
            directory(paths.report_figures),
            patterns=["{section}/{name}.png"],
            caption="../report/figure.rst",
            category="{section}",
            labels={"figure": "{name}"},
        ),
        # per arm, compute seconds beside its Dice gain (sedm/report/cost.py: why here, not in eval/summary.json)
        cost_gain=paths.cost_gain,
    params:
        # the results folder, derived from an input (R/tiles/summary.tsv) so it follows storage prefixes
        results=lambda w, input: os.path.dirname(os.path.dirname(input.tiling_summary)),
        rows=sheet_rows(SLIDES),  # the cohort table
    resources:
        sedm_runtime=RUNTIME["report"],
    log:
        log_for("report", "all"),
    benchmark:
        bench_for("report", "all")
    conda:
        ENV
    shell:
        "sedm report --config {input.config:q} --runtime {resources.sedm_runtime:q} --samples {input.samples:q}"
        " --results {params.results:q} --out {output.html:q} --figures-dir {output.figures:q}"
        " --cost-gain {output.cost_gain:q} --log {log:q}"
