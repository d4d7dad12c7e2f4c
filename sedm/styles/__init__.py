"""The styles stage: what each slide looks like, as numbers, and where it lies among the cohort's slides.

Per slide, whole-slide stain statistics computed lazily with dask over its store
(:mod:`sedm.styles.slide`, ``sedm style-stats``), and, once the diffusion model exists, the mean and
spread of its style vectors over the slide's tiles (:mod:`sedm.styles.embedding`). The cohort table
(``sedm style-table``) collects them; :mod:`sedm.styles.space` places every slide in one standardised
feature space, so the evaluation can ask whether a test patient far from the labelled slides' styles
is the one synthetic data helps, and the report can draw the style map.
"""
