"""``sedm tile``: one slide -> a Zarr v3 store (sedm.tiling.store layout) plus its tile table.

Why it is built the way it is:

* Every input is checked (config, slide, GeoJSON, geometry) before a single tile is read, so a bad
  input costs seconds, not the runtime of a half-tiled slide.
* Tissue is found once on a thumbnail; the per-tile tissue fraction follows exactly from that mask
  (nearest upsampling), so the table, the stored tissue mask and the tile selection agree.
* The store is padded to whole tiles: every listed tile reads back as a full ``tile_size`` square
  (padding is glass: white, unannotated, no tissue), and each tile owns exactly one chunk per array.
* A unit of work is one shard (up to :data:`sedm.tiling.store.SHARD_TILES` tiles of a tile row): its
  worker decodes the shard's tissue tiles one by one, builds each tile's pyramid and appends every
  level to its shard file at once (:class:`sedm.tiling.shards.Shard`), so it holds one tile at a
  time, then writes the shard's labels. One writer per shard (zarr-python #3682 loses data
  otherwise), few files (file creation cost more than encoding with one file per tile), and no
  zarr per-call overhead (~250 chunks/s through ``array[...] =``). The tissue mask, known from the
  thumbnail alone, is written in bands of whole tile rows, each its own unit of work.
* Pixels of whole tissue tiles are stored unpacked (lz4 gains ~3 % on decoded texture, for ~0.1 ms
  per tile, 5-8 % of the tiling time); tiles with glass in them are packed.
* When the target µm/px is a pyramid level of a tiled TIFF, tiles are decoded straight from the
  file (no resampling, no RGBA round trip); otherwise the slide backend resamples.
* Shards are handed to the workers with a bounded number in flight, so peak memory depends on the
  tile size and worker count (and the thumbnail), never on the number of tiles. Several workers are
  forked processes where that is safe (Linux, a TIFF level decoded directly, direct shard writes):
  as threads they spent ~20 % more CPU per tile on GIL hand-offs and kept ~1.75 of 2 cores busy;
  as processes tiling ran ~1.3x faster (:func:`_pool`). Otherwise, threads.
* The store's metadata is made while the thumbnail is searched for tissue, and the QC image drawn
  alongside the first tiles; garbage collection skips the objects that exist before the tile loop
  (:func:`frozen_gc`).
* Outputs go through :func:`sedm.atomic.atomic_path`: a failure leaves no store, table or QC image.

Where the time goes (benchmarks/tiling.py, 256 px JPEG tiles, target = a stored level, 2 workers,
20480² slide, 2-core dev VM): 0.85-1.0 ms CPU per tissue tile in one worker, of which JPEG decode
~0.42 ms (the whole of "raw decode"), transpose + 2x2 pyramid ~0.15 ms (numpy), file writes
~0.13 ms (kernel page-cache copies), the rest interpreter work. Writes go out chunk by chunk
(:mod:`sedm.tiling.shards`): one large write per shard cost 3-10x the kernel time there.
Annotated slides add ``rasterize`` (1.4-2.3 ms per 128-256 px demo tile).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sedm.atomic import atomic_path, write_bytes
from sedm.config import load_config
from sedm.errors import InputError
from sedm.tiling.store import IMAGE_FILL, TILE_COLUMNS, create_store, fraction_columns
from sedm.tiling.shards import ShardWriter

log = logging.getLogger(__name__)

TABLE_METADATA_KEY = b"sedm"
"""Parquet key-value metadata of a tile table: the slide's provenance as JSON, so the summary needs
nothing but the tables (empty tables included)."""


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """The tile grid of a slide at the target µm/px.

    ``height``/``width`` is the slide's extent at the target µm/px; the store spans ``rows x cols``
    whole tiles (``padded_height``/``padded_width``), the excess being glass.
    """

    height: int
    width: int
    tile_size: int

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def cols(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def padded_height(self) -> int:
        return self.rows * self.tile_size

    @property
    def padded_width(self) -> int:
        return self.cols * self.tile_size

    def extent(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y, x, h, w): top-left pixel of tile (row, col) and the part of it inside the slide."""
        t = self.tile_size
        y, x = row * t, col * t
        return y, x, min(t, self.height - y), min(t, self.width - x)


def target_extent(dimensions: tuple[int, int], source_mpp: float, target_mpp: float) -> tuple[int, int]:
    """(height, width) in pixels at ``target_mpp`` of a slide of level-0 ``dimensions`` (w, h).

    Rounded down (with a tolerance for float noise) so that no target pixel lies outside the slide.
    """
    w0, h0 = dimensions
    f = source_mpp / target_mpp
    return int(math.floor(h0 * f + 1e-6)), int(math.floor(w0 * f + 1e-6))


def nearest_index(n_target: int, target_mpp: float, mask_mpp: float, n_mask: int) -> np.ndarray:
    """Index into a mask axis at ``mask_mpp`` of each of ``n_target`` pixels at ``target_mpp``.

    Pixel centres are mapped (``floor((i + 0.5) * target / mask)``): nearest-neighbour resampling.
    """
    idx = np.floor((np.arange(n_target) + 0.5) * (target_mpp / mask_mpp)).astype(np.int64)
    return np.minimum(idx, n_mask - 1)


def tile_tissue_counts(mask: np.ndarray, iy: np.ndarray, ix: np.ndarray, tile_size: int,
                       rows: int, cols: int) -> np.ndarray:
    """(rows, cols) number of tissue pixels per tile of the nearest-upsampled ``mask``.

    Exact, cheap and without the full-resolution mask: ``A_y @ mask @ A_x.T``, where ``A_y[r, j]``
    counts the target rows of tile row ``r`` that map to mask row ``j``. ``A`` is banded (a tile
    row covers a few consecutive mask rows), so each product is a weighted sum of mask rows per
    tile row (``np.add.reduceat``), in integers, not a dense BLAS product: that one left OpenBLAS
    threads spinning on the cores the tile workers start on.
    """
    rowsum = _tile_sums(mask.astype(np.int32), iy, tile_size, rows)        # (rows, tw)
    return _tile_sums(np.ascontiguousarray(rowsum.T), ix, tile_size, cols).T.astype(np.int64)


def _tile_sums(values: np.ndarray, index: np.ndarray, tile_size: int, n_tiles: int) -> np.ndarray:
    """(n_tiles, ...) sum over target pixels ``i`` of tile ``i // tile_size`` of ``values[index[i]]``
    (``index`` ascending, as :func:`nearest_index` gives)."""
    tile = np.arange(len(index)) // tile_size
    key = tile * values.shape[0] + index  # ascending: runs of one (tile, row) pair
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    weights = np.diff(np.r_[starts, len(key)]).astype(values.dtype)
    pairs = values[index[starts]] * weights.reshape(-1, *[1] * (values.ndim - 1))
    pair_tile = tile[starts]
    first = np.flatnonzero(np.r_[True, pair_tile[1:] != pair_tile[:-1]])  # first pair of each tile
    out = np.zeros((n_tiles, *values.shape[1:]), dtype=values.dtype)
    out[pair_tile[first]] = np.add.reduceat(pairs, first, axis=0)
    return out


def mean2x2(chw: np.ndarray) -> np.ndarray:
    """2x2 mean of a (C, H, W) uint8 image (H, W even), rounded half up: ``(a + b + c + d + 2) // 4``.

    Column pairs are summed through a uint16 view (each element holds two neighbouring pixels, low
    byte first on little-endian machines): contiguous loops instead of numpy's stride-2 ones, 30 %
    faster on a 256 px RGB tile."""
    chw = np.ascontiguousarray(chw)
    if sys.byteorder == "little":
        pairs = chw.view(np.uint16)
        s = (pairs & 0xFF) + (pairs >> 8)  # column pairs, then row pairs
        s = s[:, 0::2] + s[:, 1::2]
    else:
        s = np.add(chw[:, 0::2], chw[:, 1::2], dtype=np.uint16)
        s = np.add(s[:, :, 0::2], s[:, :, 1::2])
    s += 2
    s >>= 2
    return s.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Reading tiles
# --------------------------------------------------------------------------------------------------

class SlideTiles:
    """Reads tile windows at the target µm/px through the slide backend, one reader per thread
    (backends keep per-handle caches and state; separate handles keep threads independent)."""

    def __init__(self, path: Path, backend: str, mpp_override: float | None, target_mpp: float) -> None:
        from sedm.tiling.slides import open_slide

        self._open = lambda: open_slide(path, backend=backend, mpp_override=mpp_override)
        self.target_mpp = target_mpp
        self._local = threading.local()
        self._readers: list[Any] = []
        self._lock = threading.Lock()

    def _reader(self):
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._open()
            self._local.reader = reader
            with self._lock:
                self._readers.append(reader)
        return reader

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the window at (x, y), all in pixels at ``target_mpp`` µm/px."""
        rgb = self._reader().read(x, y, w, h, self.target_mpp)
        return np.asarray(rgb)[..., :3]

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()


class TiffLevelTiles:
    """Decodes windows of one tiled TIFF pyramid level straight from the file.

    Used when the target µm/px is that level's: a read is then a pure decode, with no resampling and
    no backend overhead. ``os.pread`` keeps reads thread-safe without a shared file position.
    """

    def __init__(self, path: Path, page: Any, fd: int, tiff: Any) -> None:
        self.path = path
        self._page = page
        self._tiff = tiff
        self._fd = fd
        self.tile_h, self.tile_w = int(page.tilelength), int(page.tilewidth)
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self._tiles_x = -(-self.width // self.tile_w)
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        self._jpegtables = getattr(page, "jpegtables", None)
        self._decode = page.decode

    @classmethod
    def open(cls, path: Path, level_dimensions: tuple[int, int]) -> TiffLevelTiles | None:
        """The level of ``path`` whose (w, h) is ``level_dimensions``, if it is a plain tiled RGB
        uint8 TIFF page; otherwise None (the caller falls back to the slide backend)."""
        try:
            import tifffile

            tiff = tifffile.TiffFile(path)
        except Exception:  # not a TIFF tifffile understands: use the backend
            return None
        try:
            w, h = level_dimensions
            for page in tiff.pages:
                if (int(page.imagewidth), int(page.imagelength)) != (w, h):
                    continue
                if (page.is_tiled and page.samplesperpixel == 3 and page.dtype == np.uint8
                        and page.planarconfig == 1 and int(page.imagedepth) == 1
                        and len(page.dataoffsets) == -(-h // page.tilelength) * -(-w // page.tilewidth)):
                    fd = os.open(path, os.O_RDONLY)
                    return cls(path, page, fd, tiff)
                break
        except Exception:  # unusual page structure: use the backend
            pass
        tiff.close()
        return None

    def _tile(self, ty: int, tx: int) -> np.ndarray:
        i = ty * self._tiles_x + tx
        try:
            data = os.pread(self._fd, int(self._counts[i]), int(self._offsets[i]))
            arr, _, _ = self._decode(data, i, jpegtables=self._jpegtables)
        except Exception as e:  # a corrupt tile surfaces here, as whatever the codec raises
            raise InputError(self.path, None, f"cannot decode TIFF tile {i} of the level at ({tx}, {ty}): "
                             f"{type(e).__name__}: {e}", "the slide file is damaged; copy or export it again") from e
        return arr.reshape(arr.shape[-3:])

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the window at (x, y) of this level (inside the level)."""
        if x == (x // self.tile_w) * self.tile_w and y == (y // self.tile_h) * self.tile_h \
                and w <= self.tile_w and h <= self.tile_h:
            return self._tile(y // self.tile_h, x // self.tile_w)[:h, :w]
        out = np.empty((h, w, 3), dtype=np.uint8)
        for ty in range(y // self.tile_h, (y + h - 1) // self.tile_h + 1):
            for tx in range(x // self.tile_w, (x + w - 1) // self.tile_w + 1):
                tile = self._tile(ty, tx)
                y0, x0 = ty * self.tile_h, tx * self.tile_w
                ys, xs = max(y, y0), max(x, x0)
                ye, xe = min(y + h, y0 + self.tile_h), min(x + w, x0 + self.tile_w)
                out[ys - y:ye - y, xs - x:xe - x] = tile[ys - y0:ye - y0, xs - x0:xe - x0]
        return out

    def close(self) -> None:
        os.close(self._fd)
        self._tiff.close()


def matching_level(slide: Any, target_mpp: float) -> int | None:
    """The pyramid level the slide reader returns unresampled for ``target_mpp`` (its µm/px equals
    the target within :data:`sedm.tiling.slides.MPP_RTOL`), or None when reads are resampled."""
    from sedm.tiling.slides import MPP_RTOL

    level = slide.best_level(target_mpp)
    return level if abs(slide.level_mpp(level) - target_mpp) <= MPP_RTOL * target_mpp else None


# --------------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------------

@dataclass
class TilingResult:
    """What :func:`tile_slide` produced: the tile table and the store's provenance attrs."""

    table: pd.DataFrame
    provenance: dict[str, Any]
    fast_read: bool = False
    direct_write: bool = False
    processes: bool = False
    """whether the tiles were made by forked worker processes (else threads)"""


def empty_table(classes: Sequence[str]) -> pd.DataFrame:
    """A tile table with no rows and the right columns and dtypes."""
    cols: dict[str, Any] = {"slide_id": pd.Series([], dtype=str)}
    for c in TILE_COLUMNS[1:5]:
        cols[c] = pd.Series([], dtype=np.int32)
    for c in ["tissue_fraction", *fraction_columns(list(classes))]:
        cols[c] = pd.Series([], dtype=np.float32)
    return pd.DataFrame(cols)


def write_table(path: Path, table: pd.DataFrame, metadata: dict[str, Any]) -> None:
    """Write the tile table as parquet with the slide's provenance in the file's metadata."""
    tbl = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(tbl.schema.metadata or {})
    meta[TABLE_METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    pq.write_table(tbl.replace_schema_metadata(meta), path)


def read_table_metadata(path: str | Path) -> dict[str, Any] | None:
    """The provenance a tile table carries (see :data:`TABLE_METADATA_KEY`), or None."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(TABLE_METADATA_KEY)
    return None if raw is None else json.loads(raw)


@dataclass(frozen=True)
class Block:
    """The tissue tiles of one shard: tile row ``row``, tile columns ``cols`` (ascending)."""

    row: int
    cols: tuple[int, ...]


@dataclass(frozen=True)
class TissueBand:
    """The tissue tiles (row, col) of one shard of the tissue mask (a band of tile rows)."""

    cells: tuple[tuple[int, int], ...]


def with_tissue_bands(blocks: Iterator[Block], cells: Sequence[tuple[int, int]],
                      band_rows: int) -> Iterator[Block | TissueBand]:
    """``blocks`` with the tissue band of each band of ``band_rows`` tile rows just before its
    first block, so the band's work spreads over the run like the blocks'."""
    by_band: dict[int, list[tuple[int, int]]] = {}
    for cell in cells:
        by_band.setdefault(cell[0] // band_rows, []).append(cell)
    for block in blocks:
        band = by_band.pop(block.row // band_rows, None)
        if band is not None:
            yield TissueBand(tuple(band))
        yield block


def shard_blocks(cells: Sequence[tuple[int, int]], shard_tiles: int) -> Iterator[Block]:
    """The cells (sorted row-major) grouped by the shard holding them: shards span ``shard_tiles``
    tile columns of one tile row, starting at column 0."""
    key, cols = None, []
    for row, col in cells:
        k = (row, col // shard_tiles)
        if cols and k != key:
            yield Block(key[0], tuple(cols))
            cols = []
        key = k
        cols.append(col)
    if cols:
        yield Block(key[0], tuple(cols))


_FORKED_FN: Callable[[Any], Any] | None = None
"""The work function forked worker processes call (they inherit it; only batches are sent)."""


def _call_forked(batch: Any) -> Any:
    assert _FORKED_FN is not None
    return _FORKED_FN(batch)


def can_fork_workers() -> bool:
    """Whether worker processes may be forked: Linux only (macOS system libraries are not fork-safe;
    Windows has no fork)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _pool(fn: Callable[[Any], Any], workers: int, processes: bool):
    """(executor, submit, whether processes) for ``workers`` threads, or forked processes that
    inherit ``fn``.

    Processes avoid the GIL hand-offs two tiling threads pay for (decode, numpy and file writes each
    release and retake it several times per tile: ~20 % more CPU per tile with two threads than
    with one). They are forked, not spawned, so nothing is imported or pickled but the batches and
    results. The parent may have threads (zarr's event loop, BLAS pools) that a fork does not copy;
    the workers never call into them: they read the slide with ``pread``, compute with numpy and
    write shard files with plain file calls."""
    if not processes:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sedm-tile")
        return pool, functools.partial(pool.submit, fn), False
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns about any fork of a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
            first = pool.submit(int, 0)  # the workers are forked now, under the filter
        first.result()
    except OSError as exc:  # no fork here (process limits, memory): threads still work
        log.warning("cannot fork tiling workers (%s); using threads", exc)
        return _pool(fn, workers, processes=False)
    return pool, functools.partial(pool.submit, _call_forked), True


def _run_bounded(fn: Callable[[Any], Any], batches: Iterator[Any], threads: int,
                 on_result: Callable[[Any], None], processes: bool = False) -> bool:
    """Run ``fn`` over ``batches`` on ``threads`` workers (threads, or forked processes) with at most
    ``2 * threads`` batches in flight; results are handed to ``on_result`` in submission order. On
    an error, queued batches are cancelled and running ones finish before the error propagates (so
    nothing writes into the temporary output after it has been removed). Returns whether the
    workers were processes (a failed fork falls back to threads)."""
    global _FORKED_FN
    pending: deque[Future] = deque()
    _FORKED_FN = fn if processes else None  # set before the fork, so the workers inherit it
    pool, submit, processes = _pool(fn, threads, processes)
    with pool:
        try:
            for batch in batches:
                pending.append(submit(batch))
                while len(pending) >= 2 * threads:
                    on_result(pending.popleft().result())
            while pending:
                on_result(pending.popleft().result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            _FORKED_FN = None
    return processes


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Leave the objects that exist now out of garbage collection while the block is run.

    The tile loop allocates few objects, but each collection the allocations trigger walks every
    object that numpy, pandas, zarr and scikit-image left behind (~2 % of tiling time on a 20k²
    slide). Frozen objects are only skipped, not leaked: they return to the oldest generation after."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the kernel.

    Each tile allocates and frees a few 50-200 KB buffers (decoded pixels, pyramid levels, encoded
    chunks). By default glibc hands such memory back (trims the heap of each thread's arena) and the
    next tile faults it in again, zero-filled: 0.6 ms of kernel time per tile on a 20k² slide, a
    third of the tiling CPU. Fixed thresholds keep it (peak RSS grows by ~10 MB). Process-wide and
    harmless elsewhere; a no-op where the C library is not glibc. Returns whether it applied."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 256 * 2**20))


def tile_slide(slide_path: str | Path, *, slide_id: str, config: dict[str, Any], out: str | Path,
               table: str | Path, qc: str | Path, annotation: str | Path | None = None,
               threads: int | None = None, progress: bool = True, processes: bool | None = None) -> TilingResult:
    """Tile one slide into ``out`` (Zarr v3, sedm.tiling.store layout), ``table`` (parquet) and ``qc`` (PNG).

    ``config`` is a validated sedm config (sections classes, slides, tissue, tiling). ``processes``:
    whether the ``threads`` workers are forked processes; None (default) picks them where they are
    safe and faster: more than one worker, Linux, the slide level decoded directly (no slide
    library handle in the workers) and every shard written directly.
    Raises :class:`InputError` before any output exists if an input is unusable.
    """
    from sedm.tiling.slides import open_slide

    keep_freed_memory()
    classes = list(config["classes"])
    scfg, tcfg, tiling = config["slides"], config["tissue"], config["tiling"]
    target_mpp = float(tiling["mpp"])
    tile_size = int(tiling["tile_size"])
    levels = int(tiling["pyramid_levels"])
    min_fraction = float(tiling["min_tissue_fraction"])
    threads = int(tiling["threads"] if threads is None else threads)
    thumb_mpp = float(tcfg["thumbnail_mpp"])
    out, table, qc = Path(out), Path(table), Path(qc)
    slide_path = Path(slide_path)

    # ---- validation: nothing is computed before every input is known to be usable
    if tile_size % 2 ** (levels - 1):
        raise InputError(None, "tiling.tile_size", f"{tile_size} is not divisible by 2^{levels - 1}",
                         "use a power-of-two tile size or fewer tiling.pyramid_levels")
    if threads < 1:
        raise InputError(None, "--threads", f"{threads} threads", "use at least 1")
    annotations: list = []
    if annotation is not None:
        from sedm.tiling.annotations import load_geojson

        annotation = Path(annotation)
        annotations = list(load_geojson(annotation, classes))
    slide = open_slide(slide_path, backend=scfg["backend"], mpp_override=scfg["mpp_override"])
    try:
        return _tile_open_slide(slide, slide_path=slide_path, slide_id=slide_id, classes=classes,
                                annotations=annotations, annotation=annotation, target_mpp=target_mpp,
                                tile_size=tile_size, levels=levels, min_fraction=min_fraction,
                                threads=threads, thumb_mpp=thumb_mpp, tcfg=tcfg, scfg=scfg, out=out,
                                table=table, qc=qc, progress=progress, processes=processes)
    finally:
        slide.close()


def _tile_open_slide(slide: Any, *, slide_path: Path, slide_id: str, classes: list[str], annotations: list,
                     annotation: Path | None, target_mpp: float, tile_size: int, levels: int,
                     min_fraction: float, threads: int, thumb_mpp: float, tcfg: dict, scfg: dict,
                     out: Path, table: Path, qc: Path, progress: bool, processes: bool | None) -> TilingResult:
    from sedm.tiling.tissue import detect_tissue, tissue_qc_png

    source_mpp = float(slide.mpp)
    level = matching_level(slide, target_mpp)
    if level is not None:  # the reader returns this level's pixels as they are: use its exact geometry
        width, height = (int(v) for v in slide.level_dimensions[level])
        pixel_mpp = float(slide.level_mpp(level))
    else:
        height, width = target_extent(tuple(slide.dimensions), source_mpp, target_mpp)
        pixel_mpp = target_mpp
    if height < 1 or width < 1:
        raise InputError(slide_path, "tiling.mpp", f"the slide is smaller than one pixel at {target_mpp} µm/px",
                         "use a smaller tiling.mpp")
    if level is None and target_mpp < source_mpp:
        log.warning("%s: target %.4g µm/px is finer than the slide's %.4g µm/px; tiles are upsampled",
                    slide_path, target_mpp, source_mpp)
    grid = Grid(height, width, tile_size)

    provenance = {
        "source": str(slide_path.resolve()),
        "annotation": None if annotation is None else str(Path(annotation).resolve()),
        "has_annotations": annotation is not None,
        "backend": slide.backend,
        "source_mpp": source_mpp,
        "source_dimensions": [int(v) for v in slide.dimensions],
        "target_mpp": target_mpp,
        "source_level": level,
        "height": height,
        "width": width,
        "thumbnail_mpp": thumb_mpp,
        "tissue": {"min_object_um2": float(tcfg["min_object_um2"]), "min_hole_um2": float(tcfg["min_hole_um2"])},
        "min_tissue_fraction": min_fraction,
    }

    # ---- outputs (temporaries, renamed only when everything succeeded). The store's arrays are
    # made (zarr metadata, ~0.1 s) while the thumbnail is read and searched for tissue, and the QC
    # image is drawn alongside the first tiles: seconds a core would otherwise idle.
    with atomic_path(out) as tmp_store, atomic_path(table) as tmp_table, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sedm-tile-setup") as setup:
        made = setup.submit(create_store, tmp_store, slide_id=slide_id, height=grid.padded_height,
                            width=grid.padded_width, mpp=target_mpp, tile_size=tile_size, levels=levels,
                            classes=classes, provenance=dict(provenance))

        # ---- tissue mask on a thumbnail at thumbnail_mpp µm/px
        thumb = np.asarray(slide.thumbnail(thumb_mpp))[..., :3]
        mask = np.asarray(detect_tissue(thumb, thumb_mpp, min_object_um2=float(tcfg["min_object_um2"]),
                                        min_hole_um2=float(tcfg["min_hole_um2"])), dtype=bool)
        qc_png = setup.submit(tissue_qc_png, thumb, mask)
        iy = nearest_index(height, pixel_mpp, thumb_mpp, mask.shape[0])
        ix = nearest_index(width, pixel_mpp, thumb_mpp, mask.shape[1])
        counts = tile_tissue_counts(mask, iy, ix, tile_size, grid.rows, grid.cols)
        area = tile_size * tile_size
        keep = (counts > 0) & (counts >= min_fraction * area)
        cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(keep))]  # row-major order
        if not cells:
            log.warning("%s: no tile has tissue (fraction >= %g); writing an empty store and tile table",
                        slide_path, min_fraction)
        root = made.result()
        provenance["n_tiles"] = len(cells)
        root.attrs["sedm"] = {**root.attrs["sedm"], "n_tiles": len(cells)}

        writers = [ShardWriter(root[str(k)], tmp_store) for k in range(levels)]
        ann_writer = ShardWriter(root["labels/annotation/0"], tmp_store)
        tissue_writer = ShardWriter(root["labels/tissue/0"], tmp_store)
        source, fast = _tile_source(slide, slide_path, scfg, target_mpp, level, cells, tile_size)
        try:
            tiler = BlockTiler(grid=grid, source=source, mask=mask, counts=counts, iy=iy, ix=ix,
                               annotations=annotations, classes=classes, scale=source_mpp / pixel_mpp,
                               writers=writers, ann_writer=ann_writer, tissue_writer=tissue_writer)
            direct = all(w.direct for w in (*writers, ann_writer, tissue_writer))
            if processes is None:
                processes = threads > 1 and fast and direct and can_fork_workers()
            elif processes and not (fast and direct and can_fork_workers()):
                raise ValueError("worker processes need a directly decoded TIFF level, direct shard writes and fork")
            rows, processes = _write_tiles(cells, tiler=tiler, shard_tiles=writers[0].per_shard[-1],
                                           threads=threads, progress=progress, slide_id=slide_id,
                                           processes=processes)
        finally:
            source.close()
        table_meta = {"slide_id": slide_id, "tile_size": tile_size, "classes": classes, "mpp": target_mpp,
                      **provenance}
        write_table(tmp_table, rows, table_meta)
        write_bytes(qc, qc_png.result())  # atomic itself; written last, so only on success
    log.info("%s: %d tiles of %d px at %g µm/px -> %s", slide_id, len(cells), tile_size, target_mpp, out)
    return TilingResult(rows, provenance, fast_read=fast, direct_write=writers[0].direct, processes=processes)


def _tile_source(slide: Any, slide_path: Path, scfg: dict, target_mpp: float, level: int | None,
                 cells: list[tuple[int, int]], tile_size: int):
    """The fastest correct reader of target-µm/px windows: a TIFF level decoder when the target is a
    stored level and it decodes a probe tile like the backend does, else the backend itself."""
    backend = SlideTiles(slide_path, scfg["backend"], scfg["mpp_override"], target_mpp)
    if level is None or not cells:
        return backend, False
    fast = TiffLevelTiles.open(slide_path, tuple(int(v) for v in slide.level_dimensions[level]))
    if fast is None:
        return backend, False
    row, col = cells[len(cells) // 2]
    y, x = row * tile_size, col * tile_size
    h, w = min(tile_size, fast.height - y), min(tile_size, fast.width - x)
    try:
        same = np.abs(fast.read(x, y, w, h).astype(np.int16) - backend.read(x, y, w, h)).mean() <= 1.0
    except Exception as exc:  # an encoding tifffile cannot decode: the backend can
        log.debug("direct TIFF decode of %s failed (%s); using %s", slide_path, exc, slide.backend)
        same = False
    if not same:
        fast.close()
        return backend, False
    backend.close()
    log.debug("reading level %d of %s by direct TIFF decode", level, slide_path)
    return fast, True


class BlockTiler:
    """Turns one :class:`Block` into its shards (image levels, tissue mask, labels) and its rows of
    the tile table. Called from several threads: it only reads shared state, and each block is one
    shard, so no two threads write the same file."""

    def __init__(self, *, grid: Grid, source: Any, mask: np.ndarray, counts: np.ndarray, iy: np.ndarray,
                 ix: np.ndarray, annotations: list, classes: list[str], scale: float, writers: list[ShardWriter],
                 ann_writer: ShardWriter, tissue_writer: ShardWriter) -> None:
        self.grid, self.source, self.mask, self.counts, self.iy, self.ix = grid, source, mask, counts, iy, ix
        self.classes, self.scale = classes, scale
        self.writers, self.ann_writer, self.tissue_writer = writers, ann_writer, tissue_writer
        self.index = None
        if annotations:
            from sedm.tiling.annotations import AnnotationIndex

            self.index = AnnotationIndex(list(annotations), classes)  # built once, shared read-only
        t = grid.tile_size
        self.n_labels = len(classes) + 1
        self.no_label_counts = np.zeros(self.n_labels, np.int64)
        self.no_label_counts[0] = t * t  # unannotated

    def __call__(self, block: Block | TissueBand) -> list[tuple]:
        """Write the block's shards; returns (row, col, y, x, tissue pixels, label counts) per tile
        (none for a tissue band)."""
        if isinstance(block, TissueBand):
            self._write_tissue(block)
            return []
        self._write_image(block)
        label_counts = self._write_labels(block)
        t, row = self.grid.tile_size, block.row
        return [(row, col, row * t, col * t, int(self.counts[row, col]), n)
                for col, n in zip(block.cols, label_counts)]

    def _read_chw(self, row: int, col: int) -> np.ndarray:
        """(3, t, t) uint8 tile, padded with glass beyond the slide."""
        t = self.grid.tile_size
        y, x, h, w = self.grid.extent(row, col)
        if h == t and w == t:
            rgb = self.source.read(x, y, w, h)
        else:
            rgb = np.full((t, t, 3), IMAGE_FILL, dtype=np.uint8)
            rgb[:h, :w] = self.source.read(x, y, w, h)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def _write_image(self, block: Block) -> None:
        """Pixels of every level; those of whole tissue tiles are stored unpacked (lz4 would gain
        ~3 % on decoded texture; tiles with glass in them it packs)."""
        row, area = block.row, self.grid.tile_size ** 2
        with contextlib.ExitStack() as stack:  # one shard per level, written tile by tile
            shards = [stack.enter_context(w.open(w.shard_of((0, row, block.cols[0])))) for w in self.writers]
            for col in block.cols:
                chw = self._read_chw(row, col)
                unpacked = bool(self.counts[row, col] == area)
                for k, shard in enumerate(shards):
                    if k:
                        chw = mean2x2(chw)
                    shard.add((0, row, col), chw, unpacked=unpacked)

    def _write_tissue(self, band: TissueBand) -> None:
        """Tissue masks by nearest lookup into the thumbnail mask; full tiles (the bulk, known from
        ``counts``) are written as constants, so only tissue borders are looked up."""
        t = self.grid.tile_size
        chunks, full = {}, {}
        for row, col in band.cells:
            if self.counts[row, col] == t * t:
                full[(row, col)] = 1
                continue
            y, x, h, w = self.grid.extent(row, col)
            tissue = np.zeros((t, t), dtype=np.uint8)
            tissue[:h, :w] = self.mask[self.iy[y:y + h, None], self.ix[None, x:x + w]]
            chunks[(row, col)] = tissue
        self.tissue_writer.write(chunks, constants=full)

    def _write_labels(self, block: Block) -> list[np.ndarray]:
        """Label masks and per-tile label counts. Rasterised tile by tile, not once per block: a
        block-wide window was slower (3.9 vs 1.4 ms per 128 px demo tile) and, through float
        rounding of pixel centres exactly on polygon edges, not identical to the tile's own window
        (a few pixels per slide would depend on the shard size)."""
        if self.index is None:
            return [self.no_label_counts] * len(block.cols)
        from sedm.tiling.annotations import rasterize

        t = self.grid.tile_size
        chunks, counts = {}, []
        for col in block.cols:
            y, x, h, w = self.grid.extent(block.row, col)
            labels = np.asarray(rasterize(self.index, self.classes, shape=(t, t), scale=self.scale, offset=(y, x)),
                                dtype=np.uint8)
            if h < t or w < t:  # padding is glass: unannotated
                labels = labels.copy()
                labels[h:] = 0
                labels[:, w:] = 0
            chunks[(block.row, col)] = labels
            counts.append(np.bincount(labels.ravel(), minlength=self.n_labels))
        self.ann_writer.write(chunks)
        return counts


def _write_tiles(cells: list[tuple[int, int]], *, tiler: BlockTiler, shard_tiles: int, threads: int,
                 progress: bool, slide_id: str, processes: bool = False) -> tuple[pd.DataFrame, bool]:
    """Tile every cell, one shard per unit of work; returns the tile table and whether the workers
    were processes."""
    results: list[tuple] = []
    bar = tqdm(total=len(cells), unit="tile", desc=f"tiling {slide_id}", file=sys.stderr,
               disable=not progress, mininterval=1.0)

    def collect(block_result: list[tuple]) -> None:
        results.extend(block_result)
        bar.update(len(block_result))

    band_rows = tiler.tissue_writer.per_shard[0]
    try:
        with frozen_gc():
            processes = _run_bounded(tiler, with_tissue_bands(shard_blocks(cells, shard_tiles), cells, band_rows),
                                     threads, collect, processes=processes)
    finally:
        bar.close()
    return _table(results, slide_id, tiler.classes, tiler.grid.tile_size), processes


def _table(results: list[tuple], slide_id: str, classes: list[str], tile_size: int) -> pd.DataFrame:
    if not results:
        return empty_table(classes)
    results.sort(key=lambda r: (r[0], r[1]))
    area = float(tile_size * tile_size)
    arr = np.array([r[:5] for r in results], dtype=np.int64)
    fracs = np.stack([r[5] for r in results]).astype(np.float64) / area
    data: dict[str, Any] = {"slide_id": [slide_id] * len(results)}
    for i, c in enumerate(TILE_COLUMNS[1:5]):
        data[c] = arr[:, i].astype(np.int32)
    data["tissue_fraction"] = (arr[:, 4] / area).astype(np.float32)
    for i, c in enumerate(fraction_columns(classes)):
        data[c] = fracs[:, i].astype(np.float32)
    return pd.DataFrame(data)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="sedm config (YAML/JSON; sections classes, slides, "
                                                        "tissue, tiling)")
    parser.add_argument("--slide-id", required=True, help="slide identifier (sample sheet slide_id)")
    parser.add_argument("--slide", required=True, help="whole-slide image (any openslide/tiffslide format)")
    parser.add_argument("--annotation", help="QuPath GeoJSON export with the slide's annotations")
    parser.add_argument("--threads", type=int,
                        help="workers, one core each: forked processes on Linux when a TIFF level is decoded "
                             "directly, else threads (default: tiling.threads)")
    parser.add_argument("--out", required=True, help="Zarr v3 store to write (<slide>.zarr)")
    parser.add_argument("--table", required=True, help="tile table to write (<slide>.tiles.parquet)")
    parser.add_argument("--qc", required=True, help="tissue-mask QC image to write (PNG)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tile_slide(args.slide, slide_id=args.slide_id, config=config, out=args.out, table=args.table, qc=args.qc,
               annotation=args.annotation, threads=args.threads, progress=not args.no_progress)
    return 0
