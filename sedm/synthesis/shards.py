"""Sharded, resumable writing of a synthetic store.

Generating thousands of samples takes hours on a GPU, and cluster jobs get killed. Samples are
therefore made in shards of ``shard_size``; each shard's randomness depends only on (seed, slide,
shard index), and each finished shard is saved atomically in a work folder next to the output
(``<out>.partial/``, not a declared workflow output, so Snakemake does not delete it). A restarted
job skips the shards already there and ends with byte-identical arrays. The work folder carries a
key (hash of config, model weights and inputs); a folder made for anything else is discarded.
When every shard exists, the final store is assembled in a temporary sibling and renamed.

Pure NumPy/Zarr here (no torch).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from sedm.atomic import atomic_path
from sedm.tiling.store import compressor

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.parquet"
PROVENANCE_COLUMNS = (
    "sample", "layout_slide", "layout_y", "layout_x", "layout_target_class",
    "aug_affine", "aug_scale", "aug_rotation_deg", "aug_shear_deg", "aug_translate_y", "aug_translate_x",
    "aug_rot90", "aug_flip_y", "aug_flip_x", "style_slide", "style_y", "style_x",
)
"""One row per sample of a synthetic store. ``layout_*``: the labelled slide and the top-left
pixel (store µm/px) of the window the layout was cut from, the class it was drawn for; ``aug_*``:
the augmentation (affine warp about the window centre, then ``rot90`` counter-clockwise quarter
turns, then flips); ``style_slide``, ``style_y``/``style_x`` (lists, one entry per style patch):
the top-left pixels of the style patches in the unlabelled slide's store."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_shards(n_samples: int, shard_size: int) -> list[Shard]:
    return [Shard(k, s, min(s + shard_size, n_samples)) for k, s in enumerate(range(0, n_samples, shard_size))]


def partial_dir(out: str | Path) -> Path:
    """``results/synthesis/S.zarr`` -> ``results/synthesis/S.zarr.partial`` (the work folder)."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


class ShardDir:
    """The work folder of one synthesis job: a manifest with the job key and one file per shard."""

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        manifest = self.path / MANIFEST
        if self.path.exists():
            old = json.loads(manifest.read_text()).get("key") if manifest.is_file() else None
            if old != key:
                log.warning("%s belongs to another config, model or input; starting over", self.path)
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps({"key": key}) + "\n")

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.npz"

    def done(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def save(self, index: int, arrays: dict[str, np.ndarray], provenance: list[dict]) -> None:
        """Atomically write one shard: arrays plus its provenance rows (as JSON)."""
        buf = io.BytesIO()
        np.savez(buf, provenance=np.array(json.dumps(provenance)), **arrays)
        with atomic_path(self.shard_path(index)) as tmp:
            tmp.write_bytes(buf.getvalue())

    def load(self, index: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        with np.load(self.shard_path(index), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "provenance"}
            provenance = json.loads(str(z["provenance"]))
        return arrays, provenance

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def assemble_store(out: str | Path, shards: ShardDir, plan: list[Shard], *, patch_size: int,
                   on_shard: Callable[[Shard, dict[str, np.ndarray]], None] | None = None,
                   attrs: Callable[[], dict[str, Any]]) -> None:
    """Write the final store from the shards into a temporary sibling and rename it onto ``out``.

    ``on_shard`` sees each shard's arrays on the way (statistics, montage: no second pass);
    ``attrs()`` is called after the last shard and becomes ``attrs["sedm"]``.
    """
    n = plan[-1].stop if plan else 0
    zshard = max((s.size for s in plan), default=1)
    rows: list[dict] = []
    with atomic_path(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        images = root.create_array("images", shape=(n, patch_size, patch_size, 3), dtype="uint8",
                                   chunks=(1, patch_size, patch_size, 3), shards=(zshard, patch_size, patch_size, 3),
                                   compressors=compressor(), fill_value=0,
                                   dimension_names=("sample", "y", "x", "c"))
        labels = root.create_array("labels", shape=(n, patch_size, patch_size), dtype="uint8",
                                   chunks=(1, patch_size, patch_size), shards=(zshard, patch_size, patch_size),
                                   compressors=compressor(), fill_value=0, dimension_names=("sample", "y", "x"))
        for shard in plan:
            arrays, provenance = shards.load(shard.index)
            images[shard.start:shard.stop] = arrays["images"]
            labels[shard.start:shard.stop] = arrays["labels"]
            rows.extend(provenance)
            if on_shard is not None:
                on_shard(shard, arrays)
        table = pd.DataFrame(rows, columns=list(PROVENANCE_COLUMNS))
        table.to_parquet(tmp / PROVENANCE_FILE, index=False)
        root.attrs["sedm"] = {**attrs(), "n_samples": n, "provenance": PROVENANCE_FILE}


def read_provenance(store: str | Path) -> pd.DataFrame:
    """Per-sample provenance of a synthetic store (columns :data:`PROVENANCE_COLUMNS`)."""
    return pd.read_parquet(Path(store) / PROVENANCE_FILE)
