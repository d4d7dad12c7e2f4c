"""The HTML report: one self-contained page over whatever the pipeline has produced so far.

Every section reads its inputs by the fixed results layout (:mod:`sedm.report.layout`) and says
"not run" when they are absent, so the report also works for partial pipelines.
"""
