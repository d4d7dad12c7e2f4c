"""Datasets that read patches from the per-slide Zarr stores (``sedm.tiling.store``)."""
