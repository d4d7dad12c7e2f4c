"""Synthetic labelled data in the style of unseen slides (``sedm synthesize``, ``sedm stylize``).

A synthetic sample pairs an augmented label layout cut from a *labelled* slide with an image the
diffusion model draws for that layout in the style of a few tissue patches of one *unlabelled*
slide. Layout and style never come from the same slide, which is the point: the segmentation arm
gets annotated pixels in stain styles no annotation exists for.

Output store ``results/synthesis/<slide>.zarr`` (Zarr v3), one per unlabelled slide::

    /images                 (n, H, W, 3) uint8 generated RGB, H = W = the model's patch size
    /labels                 (n, H, W) uint8 the layouts, values as in sedm.labels (0 = unannotated)
    /provenance.parquet     one row per sample: where its layout and style patches came from
                            (columns: see :data:`sedm.synthesis.shards.PROVENANCE_COLUMNS`)
    attrs["sedm"]           slide_id, mpp, classes, class_values, model (path, weights sha256,
                            config), sampler, steps, guidance_scale, guidance_rescale, seed,
                            n_samples, n_style, style_draw, stats (HED statistics, style fidelity),
                            provenance (= "provenance.parquet"), the synthesis config

Per-sample provenance lives in a Parquet file inside the store rather than in attrs because it
grows with the sample count (10 style tiles per sample x 20,000 samples would be megabytes of JSON
in ``zarr.json``); :func:`sedm.synthesis.shards.read_provenance` reads it back.
"""
