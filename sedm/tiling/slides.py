"""Whole-slide reading at a stated resolution, the same through openslide and tiffslide.

Every read names its µm/px: ``read(x, y, w, h, mpp)`` returns the window whose top-left and size
are pixels *at that µm/px*, so callers never reason about pyramid levels or level-0 coordinates.
The window is read from the coarsest level that is still at least as fine as the request (one
backend call) and resampled; pixels outside the slide come back as white glass, like the empty
chunks of a sedm store.

µm/px policy (:func:`open_slide`): the file's own value wins (``openslide.mpp-x`` /
``tiffslide.mpp-x``, else the TIFF resolution tags); ``mpp_override`` is used only when the file
has none, and a disagreeing override is logged, not applied. A file value outside
``PLAUSIBLE_MPP`` (e.g. a 72 dpi print default, 352.8 µm/px) counts as missing, because tiling at
it would silently produce garbage.

Tiling reads its tiles through :func:`tile_reader`, the one factory of its two reading paths:
:class:`TiffLevelTiles` decodes a tiled TIFF level straight from the file when the target µm/px is
that level's (a read is then a pure decode), :class:`SlideTiles` reads through the backend otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sedm.errors import InputError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openslide", "tiffslide")
MPP_RTOL = 0.01
"""Two µm/px closer than this (relative) count as equal, in every stage (:func:`same_mpp`): level
choice, the direct TIFF path, the override check, and stores vs models vs synthetic data."""
PLAUSIBLE_MPP = (0.01, 50.0)
"""Level-0 µm/px a scanner can produce; values outside are print-resolution defaults, not metadata."""
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_MPP_FIX = "set slides.mpp_override in the config"


def same_mpp(a: float, b: float) -> bool:
    """Whether two µm/px count as the same resolution (within :data:`MPP_RTOL` of the larger)."""
    return abs(a - b) <= MPP_RTOL * max(a, b)


class SlideReader(ABC):
    """An open slide. Use :func:`open_slide`; subclasses only differ in how one level region is read."""

    backend: str

    def __init__(self, path: Path, handle: Any, mpp: float, mpp_source: str) -> None:
        self.path = path
        self._handle = handle
        self.mpp = mpp
        self.mpp_source = mpp_source  # provenance: "<backend>.mpp-x", "tiff-resolution" or "override"
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)
        self.level_count: int = handle.level_count
        self.level_dimensions: list[tuple[int, int]] = [tuple(d) for d in handle.level_dimensions]
        self.level_downsamples: list[float] = [float(d) for d in handle.level_downsamples]

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def vendor(self) -> str:
        """The scanner format the backend recognised (aperio, hamamatsu, generic-tiff, ...)."""
        return str(self._handle.properties.get(f"{self.backend}.vendor") or "unknown")

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level(self, mpp: float) -> int:
        """Coarsest level at least as fine as ``mpp`` (within :data:`MPP_RTOL`); 0 when ``mpp`` is finer
        than level 0.

        Reading finer and downsampling keeps detail; reading coarser would upsample a blurred level.
        """
        fine_enough = [k for k in range(self.level_count) if self.level_mpp(k) <= mpp * (1 + MPP_RTOL)]
        return max(fine_enough, key=self.level_mpp, default=0)

    def dimensions_at(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide at ``mpp`` µm/px (rounded, at least 1)."""
        f = self.mpp / mpp
        return max(1, round(self.dimensions[0] * f)), max(1, round(self.dimensions[1] * f))

    # -- pixels -----------------------------------------------------------------------------------
    def read(self, x: int, y: int, width: int, height: int, mpp: float) -> np.ndarray:
        """(height, width, 3) uint8 RGB window at ``mpp`` µm/px, top-left (x, y) in pixels at ``mpp``.

        One backend call at :meth:`best_level`; when that level's µm/px equals ``mpp`` (:func:`same_mpp`)
        its pixels are returned as they are, otherwise the exact sub-pixel box is resampled (box filter
        ~ area mean when shrinking, bilinear when the request is finer than level 0).
        """
        if width <= 0 or height <= 0 or mpp <= 0:
            raise ValueError(f"read needs a positive size and µm/px, got {width}x{height} at {mpp}")
        level = self.best_level(mpp)
        f = mpp / self.level_mpp(level)  # level pixels per output pixel
        if same_mpp(mpp, self.level_mpp(level)):
            return self._read_padded(level, x, y, width, height)
        box = (x * f, y * f, (x + width) * f, (y + height) * f)
        x0, y0 = math.floor(box[0]) - 1, math.floor(box[1]) - 1  # 1 px margin for the bilinear support
        x1, y1 = math.ceil(box[2]) + 1, math.ceil(box[3]) + 1
        src = self._read_padded(level, x0, y0, x1 - x0, y1 - y0)
        resample = Image.Resampling.BOX if f >= 1 else Image.Resampling.BILINEAR
        out = Image.fromarray(src).resize((width, height), resample,
                                          box=(box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))
        return np.asarray(out)

    def thumbnail(self, mpp: float, max_pixels: int = 2**24) -> np.ndarray:
        """Whole slide at ``mpp`` µm/px, (H, W, 3) uint8, read in row bands of at most ``max_pixels``
        source pixels so a slide without coarse levels does not need level 0 in memory at once."""
        width, height = self.dimensions_at(mpp)
        f = mpp / self.level_mpp(self.best_level(mpp))
        rows = max(1, int(max_pixels / (width * f * f)))
        return np.concatenate([self.read(0, y, width, min(rows, height - y), mpp)
                               for y in range(0, height, rows)], axis=0)

    def _read_padded(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Level pixels [x, x+width) x [y, y+height) as RGB; outside the level is white."""
        lw, lh = self.level_dimensions[level]
        cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + width, lw), min(y + height, lh)
        inside = cx1 > cx0 and cy1 > cy0
        region = None
        if inside:
            try:
                region = self._read_level(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
            except Exception as e:  # a corrupt tile surfaces here, as whatever the codec raises
                raise InputError(self.path, None, f"cannot read level {level} at ({cx0}, {cy0}) with "
                                 f"{self.backend}: {type(e).__name__}: {e}",
                                 "the slide file is damaged; copy or export it again") from e
            region = _rgb_on_white(region)
            if (cx0, cy0, cx1, cy1) == (x, y, x + width, y + height):
                return region
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if region is not None:
            out[cy0 - y:cy1 - y, cx0 - x:cx1 - x] = region
        return out

    @abstractmethod
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3 or 4) uint8 of level pixels, the box lying inside the level."""

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, backend={self.backend!r}, mpp={self.mpp:g}, "
                f"dimensions={self.dimensions}, levels={self.level_count})")


class OpenSlideReader(SlideReader):
    backend = "openslide"

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        # openslide takes a level-0 origin and interpolates when it does not land on a level pixel;
        # with integer downsamples round() lands exactly, otherwise the offset is under half a pixel.
        ds = self.level_downsamples[level]
        img = self._handle.read_region((round(x * ds), round(y * ds)), level, (width, height))
        return np.asarray(img)


class TiffSlideReader(SlideReader):
    backend = "tiffslide"

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        # tiffslide truncates origin / downsample, so pick the smallest level-0 origin that maps onto x.
        ds = self.level_downsamples[level]
        loc = []
        for v in (x, y):
            v0 = math.ceil(v * ds)
            while int(v0 / ds) < v:
                v0 += 1
            loc.append(v0)
        arr = self._handle.read_region(tuple(loc), level, (width, height), as_array=True, padding=False)
        return np.asarray(arr, dtype=np.uint8)


def _rgb_on_white(region: np.ndarray) -> np.ndarray:
    """RGB(A) uint8 -> RGB with transparent pixels (openslide's outside-the-scan) composited onto white."""
    if region.ndim == 2:
        return np.repeat(region[..., None], 3, axis=2)
    if region.shape[2] == 3:
        return region
    rgb, alpha = region[..., :3], region[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


# -- opening --------------------------------------------------------------------------------------
def open_slide(path: str | Path, backend: str = "auto", mpp_override: float | None = None) -> SlideReader:
    """Open a slide and settle its level-0 µm/px (see the module docstring for the policy).

    ``backend="auto"`` tries openslide, then tiffslide. Missing, unreadable or truncated files, an
    unknown backend and an unknown µm/px all raise :class:`InputError` here, before any compute.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise InputError(None, "slides.backend", f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise InputError(path, None, "slide file not found", "check slide_path in the sample sheet")
    if _is_tiff(path):
        _check_tiff_complete(path)
    errors: list[str] = []
    reader: SlideReader | None = None
    for name in ("openslide", "tiffslide") if backend == "auto" else (backend,):
        try:
            reader = _open_with(name, path)
            break
        except Exception as e:  # each library has its own "cannot open" exception
            errors.append(f"{name}: {type(e).__name__}: {e}")
    if reader is None:
        raise InputError(path, None, "not a slide that can be opened (" + "; ".join(errors) + ")",
                         "check that the file is a complete whole-slide image, or convert it to a pyramidal TIFF")
    try:
        reader.mpp, reader.mpp_source = _settle_mpp(path, reader, mpp_override)
    except BaseException:
        reader.close()
        raise
    return reader


def _open_with(name: str, path: Path) -> SlideReader:
    if name == "openslide":
        import openslide  # the shared library comes from openslide-bin; importing may fail without it

        if openslide.OpenSlide.detect_format(str(path)) is None:
            raise ValueError("format not recognised")
        # OpenSlide(), not openslide.open_slide(): the latter falls back to PIL and hides broken files
        handle = openslide.OpenSlide(str(path))
        return OpenSlideReader(path, handle, math.nan, "")
    import tiffslide

    return TiffSlideReader(path, tiffslide.TiffSlide(str(path)), math.nan, "")


def _settle_mpp(path: Path, reader: SlideReader, override: float | None) -> tuple[float, str]:
    props = reader._handle.properties
    key = f"{reader.backend}.mpp"
    found, source = None, ""
    candidates = ((f"{key}-x", lambda: props.get(f"{key}-x")), ("tiff-resolution", lambda: tiff_resolution_mpp(path)))
    for src, get in candidates:  # lazily: the tags are only parsed when the backend has no value
        value = get()
        if value is None:
            continue
        value = float(value)
        if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
            found, source = value, src
            break
        log.warning("%s: ignoring implausible µm/px %g from %s", path, value, src)
    if found is not None:
        mpp_y = props.get(f"{key}-y")
        if source.endswith("-x") and mpp_y is not None and not same_mpp(float(mpp_y), found):
            log.warning("%s: pixels are not square (%g x %g µm); using %g", path, found, float(mpp_y), found)
        if override is not None and not same_mpp(override, found):
            log.warning("%s: slides.mpp_override %g differs from the file's %g µm/px (%s); the file's value "
                        "is used, the override only applies to files without one", path, override, found, source)
        return found, source
    if override is not None:
        return float(override), "override"
    raise InputError(path, "mpp", "the slide has no µm/px (no mpp property nor TIFF resolution tags)", _MPP_FIX)


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _TIFF_MAGIC


def tiff_resolution_mpp(path: str | Path) -> float | None:
    """µm/px from the first page's XResolution + ResolutionUnit (INCH or CENTIMETER); None without them."""
    import tifffile

    path = Path(path)
    if not _is_tiff(path):
        return None
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if res is None or unit is None:
            return None
        num, den = res.value
        um_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
        if um_per_unit is None or num <= 0 or den <= 0:
            return None
        return um_per_unit * den / num


def _check_tiff_complete(path: Path) -> None:
    """A truncated TIFF opens fine and then fails inside a codec mid-job; check every tile is on disk."""
    import tifffile

    size = path.stat().st_size
    fix = "the file is damaged or was not copied completely; copy or export it again"
    try:
        with tifffile.TiffFile(path) as tif:
            for i, page in enumerate(tif.pages):
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
                if ends and max(ends) > size:
                    raise InputError(path, None, f"truncated TIFF: page {i} needs {max(ends)} bytes, the file "
                                     f"has {size}", fix)
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, None, f"corrupt TIFF structure ({type(e).__name__}: {e})", fix) from e


# -- reading tiles --------------------------------------------------------------------------------
class SlideTiles:
    """Reads tile windows at the target µm/px through the slide backend, one reader per thread
    (backends keep per-handle caches and state; separate handles keep threads independent)."""

    def __init__(self, path: Path, backend: str, mpp_override: float | None, target_mpp: float) -> None:
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
    level = slide.best_level(target_mpp)
    return level if same_mpp(slide.level_mpp(level), target_mpp) else None


def tile_reader(slide: Any, slide_path: Path, scfg: dict, target_mpp: float, level: int | None,
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
