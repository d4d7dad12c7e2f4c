"""The HTML report: one self-contained page over whatever the pipeline has produced so far.

Every section reads its inputs by the fixed results layout (:mod:`sedm.report.layout`) and says
"not run" when they are absent, so the report also works for partial pipelines. Modules: ``build``
(the command, rendering, provenance), ``stages`` (cohort, tiling, diffusion, synthesis, segmentation
training, compute), ``evaluation`` (per-patient scores, comparisons, prediction overlays), ``tables``
(figures, tables, formatting, tolerant readers), ``plots`` and ``layout``.
"""
