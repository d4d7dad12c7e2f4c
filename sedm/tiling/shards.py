"""Writing whole Zarr v3 shards of a local array, each by one writer, straight into its file.

Why not ``array[region] = block``: zarr-python's per-call overhead (async pipeline, per-inner-chunk
bookkeeping) costs more than encoding a tile with a fast codec, and writing a shard chunk by chunk
through zarr rewrites the whole shard file each time. Here a shard file is written once, front to
back: each chunk is encoded and appended as it comes (:class:`Shard`), the index last, so a worker
holds one chunk at a time. Why shards at all: one file per tile and array made file creation
the largest cost of ``sedm tile``. Why writes are at most
:data:`_WRITE_BYTES`: see there.

The bytes follow the v3 ``sharding_indexed`` spec: the encoded inner chunks back to back (in the
order they were added; :meth:`ShardWriter.write` adds them in C order of the inner chunk grid, and
zarr-python writes Morton order, which is the same for a shard one chunk high), then the index: per
inner chunk (offset, nbytes) as little-endian uint64, (2^64-1, 2^64-1) for an empty chunk, followed
by its crc32c when the index codecs say so. tests/test_tiling.py checks the bytes against
zarr-python's own writes.

One shard must have exactly one writer (zarr-python #3682: concurrent writes into one shard lose
data): callers hand every shard to one worker.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import google_crc32c  # a zarr-python dependency (its crc32c codec)
import numpy as np
import zarr

_EMPTY = np.uint64(2**64 - 1)
_WRITE_BYTES = 256 * 2**10
"""Largest single write. One write per shard file cost several times the kernel time of writes of
a few hundred KB on ext4 (likely the large page-cache folios the kernel uses for large writes), so
a shard goes out chunk by chunk, large chunks in slices."""


class ShardWriter:
    """Writes whole shards of one sharded array; thread-safe as long as no two threads write one shard.

    Fast path (local store, ``sharding_indexed`` with inner codecs ``bytes`` + ``blosc`` on uint8,
    index ``bytes`` (+ ``crc32c``) at the end): inner chunks are encoded with numcodecs' Blosc
    configured exactly like the array's codec and written straight to the shard file. Anything else
    falls back to one zarr write of the shard's region (still one writer per shard, so safe).
    Inner chunks equal to the fill value are left empty, as zarr does with
    ``write_empty_chunks=False``; a shard with no stored chunk is not written at all. The encoded
    bytes of other constant chunks (all-tissue masks, tiles inside one annotation) are reused.
    Chunks the caller knows will not pack can be stored unpacked: in the Blosc frame Blosc itself
    writes for data it cannot compress (flagged "memcpyed"; every Blosc reader decodes it), minus
    the failed attempt. Pixels of whole tissue tiles are such data: JPEG-decoded texture gains next
    to nothing from lz4 (:func:`sedm.tiling.store.compressor`).
    """

    def __init__(self, array: zarr.Array, store_root: Path | None) -> None:
        self.array = array
        self.fill = array.fill_value
        self.chunks = tuple(array.chunks)  # inner (read) chunk shape
        self.shards = tuple(array.shards or array.chunks)
        self.per_shard = tuple(s // c for s, c in zip(self.shards, self.chunks))
        self._codec, self._crc, self._store = None, False, None
        self._dir: Path | None = None
        self._made: set[Path] = set()
        self._constant: dict[int, bytes] = {}
        self._header: bytes | None = None
        self._lock = threading.Lock()
        layout = _direct_layout(array) if store_root is not None else None
        if layout is not None:
            self._codec, self._crc, self._store = layout
            self._dir = Path(store_root) / array.path
            # a Blosc "memcpyed" frame is a 16-byte header that depends only on the size, then the
            # bytes as they are: made once here, so unpacked chunks go out without being copied
            nbytes = math.prod(self.chunks)
            frame = self._store(np.zeros(nbytes, np.uint8))
            self._header = bytes(frame[:-nbytes]) if len(frame) == nbytes + 16 else None

    @property
    def direct(self) -> bool:
        return self._codec is not None

    def shard_of(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """The shard grid index holding inner chunk ``index``."""
        return tuple(i // n for i, n in zip(index, self.per_shard))

    def open(self, shard: tuple[int, ...]) -> Shard:
        """Start writing shard ``shard`` (its grid index) chunk by chunk; use as a context manager."""
        return Shard(self, shard)

    def write(self, chunks: Mapping[tuple[int, ...], np.ndarray],
              constants: Mapping[tuple[int, ...], int] | None = None) -> int:
        """Write one shard from its inner chunks, keyed by their (array-wide) chunk grid index;
        ``constants`` names chunks known to hold one value everywhere (no array needed, no scan).
        Chunks not given read as the fill value. Returns how many chunks were stored."""
        items = sorted([*chunks.items(), *(constants or {}).items()], key=lambda item: item[0])  # C order
        if not items:
            return 0
        shard = self.shard_of(items[0][0])
        for index, _ in items:  # before anything is written
            if self.shard_of(index) != shard:
                raise ValueError(f"chunks {index} and {items[0][0]} lie in different shards")
        with self.open(shard) as out:
            for index, chunk in items:
                out.add(index, chunk)
        return out.stored

    def _unpacked_pieces(self, chunk: np.ndarray) -> list:
        """An unpacked chunk as (frame header, the chunk's own buffer)."""
        chunk = np.ascontiguousarray(chunk)
        if self._header is None:  # a Blosc that frames stored data otherwise: let it copy
            return [self._store(chunk)]
        return [self._header, memoryview(chunk).cast("B")]

    def _encode_chunk(self, chunk: np.ndarray | int) -> bytes:
        value = chunk if not isinstance(chunk, np.ndarray) else int(chunk.flat[0])
        if isinstance(chunk, np.ndarray) and not _is_constant(chunk, value):
            return self._codec(np.ascontiguousarray(chunk))
        data = self._constant.get(value)
        if data is None:
            data = self._constant[value] = self._codec(np.full(self.chunks, value, dtype=self.array.dtype))
        return data

    def _create(self, shard: tuple[int, ...]) -> int:
        """A new, empty shard file (its folder made once), open for writing."""
        path = self._dir / self.array.metadata.encode_chunk_key(shard)
        parent = path.parent
        if parent not in self._made:
            parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made.add(parent)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)

    def _write_with_zarr(self, shard: tuple[int, ...], stored: dict[int, np.ndarray]) -> None:
        block = np.full(self.shards, self.fill, dtype=self.array.dtype)
        for flat, chunk in stored.items():  # a constant (int) broadcasts
            local = np.unravel_index(flat, self.per_shard)
            block[tuple(slice(i * c, (i + 1) * c) for i, c in zip(local, self.chunks))] = chunk
        start = [s * n for s, n in zip(shard, self.shards)]
        stop = [min(a + n, size) for a, n, size in zip(start, self.shards, self.array.shape)]
        self.array[tuple(slice(a, b) for a, b in zip(start, stop))] = \
            block[tuple(slice(0, b - a) for a, b in zip(start, stop))]


class Shard:
    """One shard being written: each chunk is encoded and appended to the file as it is added, the
    index when the shard is closed. A worker thus holds one chunk at a time, whatever the shard
    size. The file is made with the first stored chunk, so a shard of fill values has none; if the
    ``with`` block fails, the file is left without an index (in a temporary store that is removed).
    Chunks may come in any order (the index says where each one is); :meth:`ShardWriter.write`
    adds them in C order, as zarr-python lays out a shard one chunk high."""

    def __init__(self, writer: ShardWriter, shard: tuple[int, ...]) -> None:
        self.writer, self.shard = writer, tuple(shard)
        self.stored = 0
        self._index = np.full((math.prod(writer.per_shard), 2), _EMPTY, dtype="<u8")
        self._offset = 0
        self._fd: int | None = None
        self._pending: dict[int, np.ndarray | int] = {}  # zarr fallback: written whole at the end

    def __enter__(self) -> Shard:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def add(self, index: tuple[int, ...], chunk: np.ndarray | int, unpacked: bool = False) -> bool:
        """Store inner chunk ``index`` (array-wide chunk grid index): an array of the chunk shape,
        or an int for a chunk known to hold that value everywhere. Chunks equal to the fill value
        are skipped. ``unpacked``: store without trying to compress (see :class:`ShardWriter`).
        Returns whether it was stored."""
        w = self.writer
        if w.shard_of(index) != self.shard:
            raise ValueError(f"chunk {index} does not lie in shard {self.shard}")
        if isinstance(chunk, np.ndarray):
            if chunk.shape != w.chunks:
                raise ValueError(f"chunk shape {chunk.shape} != {w.chunks}")
            if _is_constant(chunk, w.fill):
                return False
        elif chunk == w.fill:
            return False
        local = tuple(i - s * n for i, s, n in zip(index, self.shard, w.per_shard))
        flat = int(np.ravel_multi_index(local, w.per_shard))
        if self._index[flat, 0] != _EMPTY or flat in self._pending:
            raise ValueError(f"chunk {index} was already written")
        if w._codec is None:
            self._pending[flat] = chunk
        else:
            if unpacked and isinstance(chunk, np.ndarray):
                pieces = w._unpacked_pieces(chunk)
            else:
                pieces = [w._encode_chunk(chunk)]
            if self._fd is None:
                self._fd = w._create(self.shard)
            size = _write_all(self._fd, pieces)
            self._index[flat] = (self._offset, size)
            self._offset += size
        self.stored += 1
        return True

    def _finish(self) -> None:
        """The index (+ its crc32c) after the chunks; or the whole shard through zarr."""
        w = self.writer
        if self._pending:
            w._write_with_zarr(self.shard, self._pending)
        elif self._fd is not None:
            raw = self._index.tobytes()
            _write_all(self._fd, [raw, int(google_crc32c.value(raw)).to_bytes(4, "little")] if w._crc else [raw])


def _write_all(fd: int, pieces: list) -> int:
    """Write ``pieces`` (bytes-like) back to back, gathered into writes of at most
    :data:`_WRITE_BYTES` (one call for a chunk and its header), resuming after short writes;
    returns the bytes written."""
    views = [v for v in (memoryview(p).cast("B") for p in pieces) if len(v)]
    total = sum(map(len, views))
    while views:
        batch, room = [], _WRITE_BYTES
        for v in views:
            batch.append(v[:room])
            room -= len(batch[-1])
            if not room:
                break
        done = os.writev(fd, batch)
        while done:  # drop what was written
            step = min(done, len(views[0]))
            done -= step
            views[0] = views[0][step:]
            if not len(views[0]):
                views.pop(0)
    return total


def _is_constant(chunk: np.ndarray, value) -> bool:
    """Whether every element equals ``value``; three probes first, since tissue tiles rarely are."""
    flat = chunk.reshape(-1)
    if flat[0] != value or flat[-1] != value or flat[flat.size // 2] != value:
        return False
    return not np.any(chunk != value)


def _direct_layout(array: zarr.Array):
    """(function encoding an inner chunk to ``array``'s bytes, whether the index has a crc32c,
    function storing a chunk unpacked in the same codec's frame), or None if the array is not a
    uint8 v3 local array sharded as :class:`ShardWriter` writes it."""
    from numcodecs.blosc import compress as blosc_compress
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation
    from zarr.storage import LocalStore

    try:
        meta = array.metadata
        codecs = tuple(meta.codecs)
        if not (meta.zarr_format == 3 and isinstance(array.store, LocalStore) and np.dtype(array.dtype) == np.uint8
                and len(codecs) == 1 and isinstance(codecs[0], ShardingCodec)):
            return None
        sharding = codecs[0]
        inner, index = tuple(sharding.codecs), tuple(sharding.index_codecs)
        ok = (sharding.index_location == ShardingCodecIndexLocation.end
              and len(inner) == 2 and isinstance(inner[0], BytesCodec) and isinstance(inner[1], BloscCodec)
              and 1 <= len(index) <= 2 and isinstance(index[0], BytesCodec)
              and getattr(index[0].endian, "value", "little") == "little"
              and all(isinstance(c, Crc32cCodec) for c in index[1:]))
    except AttributeError:  # pragma: no cover - a zarr without these attributes: use zarr writes
        return None
    if not ok:
        return None
    blosc = inner[1]
    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[blosc.shuffle.value]
    # numcodecs' compress() is what zarr's BloscCodec calls (through Blosc.encode, whose checks
    # cost a sizeable share of encoding a tile); same arguments, same bytes
    encode = functools.partial(blosc_compress, cname=blosc.cname.value.encode(), clevel=blosc.clevel,
                               shuffle=shuffle, blocksize=blosc.blocksize, typesize=blosc.typesize)
    # clevel 0: a Blosc frame flagged "memcpyed", exactly what Blosc writes for data it fails to pack
    store = functools.partial(encode, clevel=0)
    return encode, len(index) == 2, store


def read_shard_index(path: Path, n_chunks: int, crc: bool = True) -> np.ndarray:
    """The (n_chunks, 2) (offset, nbytes) index at the end of a shard file (2^64-1 = empty chunk)."""
    size = 16 * n_chunks + (4 if crc else 0)
    with open(path, "rb") as fh:
        fh.seek(-size, os.SEEK_END)
        raw = fh.read(size)
    return np.frombuffer(raw[:16 * n_chunks], dtype="<u8").reshape(n_chunks, 2)
