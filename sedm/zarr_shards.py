"""Writing whole Zarr v3 shards of a local array: each shard file is created once, complete.

Why not ``array[region] = block``: zarr-python's per-call overhead (async pipeline, per-inner-chunk
bookkeeping) costs more than encoding a tile with a fast codec, and writing a shard chunk by chunk
rewrites the whole shard file each time. Why shards at all: one file per tile and array made file
creation (~0.5-0.9 ms each on ext4) the largest cost of ``sedm tile``. Why the file is written in
pieces of at most :data:`_WRITE_BYTES`: see there.

The bytes follow the v3 ``sharding_indexed`` spec: the encoded inner chunks back to back (C order of
the inner chunk grid; zarr-python writes Morton order, which is the same for a shard one chunk
high), then the index: per inner chunk (offset, nbytes) as little-endian uint64, (2^64-1, 2^64-1)
for an empty chunk, followed by its crc32c when the index codecs say so. tests/test_tiling.py checks
the bytes against zarr-python's own writes.

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
"""Largest single write. Writing 900 MB as 6 MB files took 3.4-3.6 s of kernel time in one write
per file and 0.4-1.1 s in 192 KB writes on the dev VM's ext4 (likely the large page-cache folios
the kernel uses for large writes), so a shard goes out chunk by chunk, large chunks in slices."""


class ShardWriter:
    """Writes whole shards of one sharded array; thread-safe as long as no two threads write one shard.

    Fast path (local store, ``sharding_indexed`` with inner codecs ``bytes`` + ``blosc`` on uint8,
    index ``bytes`` (+ ``crc32c``) at the end): inner chunks are encoded with numcodecs' Blosc
    configured exactly like the array's codec and the shard file is written in one go. Anything else
    falls back to one zarr write of the shard's region (still one writer per shard, so safe).
    Inner chunks equal to the fill value are left empty, as zarr does with
    ``write_empty_chunks=False``; a shard with no stored chunk is not written at all. The encoded
    bytes of other constant chunks (all-tissue masks, tiles inside one annotation) are reused.
    """

    def __init__(self, array: zarr.Array, store_root: Path | None) -> None:
        self.array = array
        self.fill = array.fill_value
        self.chunks = tuple(array.chunks)  # inner (read) chunk shape
        self.shards = tuple(array.shards or array.chunks)
        self.per_shard = tuple(s // c for s, c in zip(self.shards, self.chunks))
        self._codec, self._crc = None, False
        self._dir: Path | None = None
        self._made: set[Path] = set()
        self._constant: dict[int, bytes] = {}
        self._lock = threading.Lock()
        layout = _direct_layout(array) if store_root is not None else None
        if layout is not None:
            self._codec, self._crc = layout
            self._dir = Path(store_root) / array.path

    @property
    def direct(self) -> bool:
        return self._codec is not None

    def shard_of(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """The shard grid index holding inner chunk ``index``."""
        return tuple(i // n for i, n in zip(index, self.per_shard))

    def write(self, chunks: Mapping[tuple[int, ...], np.ndarray]) -> int:
        """Write one shard from its inner chunks, keyed by their (array-wide) chunk grid index;
        chunks not given read as the fill value. Returns how many chunks were stored."""
        if not chunks:
            return 0
        shard = self.shard_of(next(iter(chunks)))
        stored: dict[int, np.ndarray] = {}
        for index, chunk in chunks.items():
            if self.shard_of(index) != shard:
                raise ValueError(f"chunks {index} and {next(iter(chunks))} lie in different shards")
            if chunk.shape != self.chunks:
                raise ValueError(f"chunk shape {chunk.shape} != {self.chunks}")
            if not _is_constant(chunk, self.fill):
                local = tuple(i - s * n for i, s, n in zip(index, shard, self.per_shard))
                stored[int(np.ravel_multi_index(local, self.per_shard))] = chunk
        if stored:
            if self._codec is None:
                self._write_with_zarr(shard, stored)
            else:
                self._write_file(shard, self._encode(stored))
        return len(stored)

    def _encode(self, stored: dict[int, np.ndarray]) -> list[bytes]:
        """The shard's byte pieces: inner chunks in C order, then the index (+ crc32c)."""
        index = np.full((math.prod(self.per_shard), 2), _EMPTY, dtype="<u8")
        pieces: list[bytes] = []
        offset = 0
        for flat in sorted(stored):
            data = self._encode_chunk(stored[flat])
            index[flat] = (offset, len(data))
            offset += len(data)
            pieces.append(data)
        raw = index.tobytes()
        pieces.append(raw)
        if self._crc:
            pieces.append(int(google_crc32c.value(raw)).to_bytes(4, "little"))
        return pieces

    def _encode_chunk(self, chunk: np.ndarray) -> bytes:
        first = chunk.flat[0]
        if _is_constant(chunk, first):
            data = self._constant.get(int(first))
            if data is None:
                data = self._constant[int(first)] = self._codec(np.ascontiguousarray(chunk))
            return data
        return self._codec(np.ascontiguousarray(chunk))

    def _write_file(self, shard: tuple[int, ...], pieces: list[bytes]) -> None:
        """The pieces straight from their buffers (no joined copy, no buffered file object)."""
        path = self._dir / self.array.metadata.encode_chunk_key(shard)
        parent = path.parent
        if parent not in self._made:
            parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made.add(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, pieces)
        finally:
            os.close(fd)

    def _write_with_zarr(self, shard: tuple[int, ...], stored: dict[int, np.ndarray]) -> None:
        block = np.full(self.shards, self.fill, dtype=self.array.dtype)
        for flat, chunk in stored.items():
            local = np.unravel_index(flat, self.per_shard)
            block[tuple(slice(i * c, (i + 1) * c) for i, c in zip(local, self.chunks))] = chunk
        start = [s * n for s, n in zip(shard, self.shards)]
        stop = [min(a + n, size) for a, n, size in zip(start, self.shards, self.array.shape)]
        self.array[tuple(slice(a, b) for a, b in zip(start, stop))] = \
            block[tuple(slice(0, b - a) for a, b in zip(start, stop))]


def _write_all(fd: int, pieces: list[bytes]) -> None:
    """Write ``pieces`` back to back in writes of at most :data:`_WRITE_BYTES`, resuming after
    short writes."""
    for piece in pieces:
        view = memoryview(piece)
        while len(view):
            view = view[os.write(fd, view[:_WRITE_BYTES]):]


def _is_constant(chunk: np.ndarray, value) -> bool:
    """Whether every element equals ``value``; three probes first, since tissue tiles rarely are."""
    flat = chunk.reshape(-1)
    if flat[0] != value or flat[-1] != value or flat[flat.size // 2] != value:
        return False
    return not np.any(chunk != value)


def _direct_layout(array: zarr.Array):
    """(function encoding an inner chunk to ``array``'s bytes, whether the index has a crc32c), or
    None if the array is not a uint8 v3 local array sharded as :class:`ShardWriter` writes it."""
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
    # cost ~20 % of encoding a tile); same arguments, same bytes
    encode = functools.partial(blosc_compress, cname=blosc.cname.value.encode(), clevel=blosc.clevel,
                               shuffle=shuffle, blocksize=blosc.blocksize, typesize=blosc.typesize)
    return encode, len(index) == 2


def read_shard_index(path: Path, n_chunks: int, crc: bool = True) -> np.ndarray:
    """The (n_chunks, 2) (offset, nbytes) index at the end of a shard file (2^64-1 = empty chunk)."""
    size = 16 * n_chunks + (4 if crc else 0)
    with open(path, "rb") as fh:
        fh.seek(-size, os.SEEK_END)
        raw = fh.read(size)
    return np.frombuffer(raw[:16 * n_chunks], dtype="<u8").reshape(n_chunks, 2)
