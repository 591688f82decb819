"""Whole-chunk writes to a local zarr array (format 2 or 3) at a fraction of zarr-python's cost.

zarr-python 3 spends about 2 ms of CPU on every ``array[region] = data`` call
(hand-offs to its event-loop thread and two worker threads, indexing, the codec
pipeline), whatever the size: more than compressing a 256 x 256 chunk. A
block that writes its level-0 chunk and its pyramid chunks makes three such
calls. :class:`ChunkWriter` writes whole chunks itself, in the calling thread:

- each chunk is encoded with the array's own compressor as its metadata
  declare it (zarr 3: ``bytes`` (little endian) + optional ``zstd``; zarr 2:
  a numcodecs compressor, no filters, C order), so the file holds the bytes
  zarr-python would write (``tests/test_ome_zarr.py`` compares them);
- the file is named by the array's chunk-key encoding, written to a
  temporary name and renamed; edge chunks are padded with the fill value;
  a chunk that holds only the fill value is not stored (an earlier file of
  it is removed), as zarr-python does by default;
- anything else goes through zarr-python unchanged: a region that is not made
  of whole chunks, or an array whose codecs are not the ones above
  (sharding, filters, big-endian, another compressor in zarr 3, ...).

Only the metadata written by zarr-python are read; nothing here writes them.
"""

import contextlib
import os
import sys
import threading
from pathlib import Path

import numpy as np

_WRITERS = {}


def _zstd_encoder(codecs):
    """The encoder of zarr 3 codecs ``bytes`` (little endian) [+ ``zstd``], else None."""
    names = [type(codec).__name__ for codec in codecs]
    if not names or names[0] != "BytesCodec" or len(names) > 2:
        return None
    endian = getattr(codecs[0], "endian", None)
    if endian is not None and getattr(endian, "value", endian) != "little":
        return None
    if len(names) == 1:
        return bytes
    if names[1] != "ZstdCodec":
        return None
    import numcodecs

    zstd = numcodecs.Zstd(level=int(codecs[1].level), checksum=bool(codecs[1].checksum))
    return zstd.encode


def chunk_encoder(array):
    """A function ``C-contiguous chunk ndarray -> bytes`` equal to zarr-python's, or None.

    Args:
        array: an open ``zarr.Array`` (zarr-python 3).

    Returns:
        the encoder, or None when the array's codecs are not ones this module
        writes (then write through zarr-python).
    """
    metadata = getattr(array, "metadata", None)
    if metadata is None or sys.byteorder != "little":
        return None
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biuf" or dtype.byteorder == ">":
        return None
    if getattr(metadata, "zarr_format", None) == 3:
        return _zstd_encoder(tuple(getattr(metadata, "codecs", ()) or ()))
    if getattr(metadata, "zarr_format", None) == 2:
        if metadata.filters or getattr(metadata, "order", "C") != "C":
            return None
        compressor = metadata.compressor
        if compressor is None:
            return bytes
        return compressor.encode if hasattr(compressor, "encode") else None
    return None


def _fill_value(array):
    fill = getattr(array, "fill_value", None)
    return None if fill is None else np.asarray(fill, dtype=array.dtype)


class ChunkWriter:
    """Writes whole chunks of the zarr array at ``path`` (see the module docstring).

    Attributes:
        path: folder of the array; ``array``: it opened with zarr-python (r+).
        encoder: ``chunk_encoder(array)`` (None: every write goes through zarr).
    """

    def __init__(self, path):
        import zarr

        self.path = Path(path)
        self.array = zarr.open_array(str(self.path), mode="r+")
        self.shape = tuple(int(n) for n in self.array.shape)
        self.chunks = tuple(int(c) for c in self.array.chunks)
        self.fill = _fill_value(self.array)
        self.encoder = chunk_encoder(self.array) if self.fill is not None else None
        self.root = str(self.path)
        # a zero fill: "holds only the fill value" is "has no non-zero item" (no temporary)
        self.zero_fill = self.fill is not None and bool(self.fill == 0)

    def whole_chunks(self, start, shape):
        """True if the region ``start``, ``shape`` is made of whole chunks (edges allowed)."""
        return all(s % c == 0 and (n % c == 0 or s + n == extent)
                   for s, n, c, extent in zip(start, shape, self.chunks, self.shape))

    def write(self, start, data):
        """Store ``data`` (the array's dtype, or cast like zarr does) at ``start``.

        Args:
            start: first voxel of the region, one int per axis.
            data: array of the region's shape.
        """
        data = np.asarray(data)
        start = tuple(int(s) for s in start)
        if self.encoder is None or not self.whole_chunks(start, data.shape):
            self.array[tuple(slice(s, s + n) for s, n in zip(start, data.shape))] = data
            return
        data = data.astype(self.array.dtype, copy=False)
        for index in np.ndindex(*(-(-n // c) for n, c in zip(data.shape, self.chunks))):
            part = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, self.chunks))]
            coords = tuple(s // c + i for s, c, i in zip(start, self.chunks, index))
            self.write_chunk(coords, part)

    def write_chunk(self, coords, part):
        """Encode one chunk (``part``, padded to the chunk shape with the fill value) and
        store it under its key, or remove the key when it holds only the fill value."""
        target = os.path.join(self.root, self.array.metadata.encode_chunk_key(coords))
        if not (part.any() if self.zero_fill else np.any(part != self.fill)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            return
        if part.shape != self.chunks:
            padded = np.full(self.chunks, self.fill, dtype=part.dtype)
            padded[tuple(slice(0, n) for n in part.shape)] = part
            part = padded
        encoded = self.encoder(np.ascontiguousarray(part))
        folder, name = os.path.split(target)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            try:
                handle = open(tmp, "wb")
            except FileNotFoundError:  # the chunk's folder is created on its first chunk only
                os.makedirs(folder, exist_ok=True)
                handle = open(tmp, "wb")
            with handle:
                handle.write(encoded)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def chunk_writer(path):
    """The ``ChunkWriter`` of the array at ``path``, cached per process.

    Opening a zarr 3 array costs ~10 ms (metadata read, async set-up): too much
    per block. The cache key holds the metadata file's inode and modification
    time, so an array replaced (``--overwrite``) is opened anew.
    """
    path = Path(path)
    for name in ("zarr.json", ".zarray"):
        try:
            stat = (path / name).stat()
        except OSError:
            continue
        key = (str(path.absolute()), stat.st_ino, stat.st_mtime_ns)
        if key not in _WRITERS:
            if len(_WRITERS) > 64:
                _WRITERS.clear()
            _WRITERS[key] = ChunkWriter(path)
        return _WRITERS[key]
    return ChunkWriter(path)  # raises: no array there


__all__ = ["ChunkWriter", "chunk_writer", "chunk_encoder"]
