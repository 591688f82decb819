"""One parser for every file spec a command or a reader/writer takes: ``parse_spec``.

Forms (extensions in any case: ``X.TIF``, ``FILE.H5:key``):

- ``stack.tif`` / ``stack.tiff``: a TIFF file (kind ``"tiff"``);
- ``slice.png`` / ``.jpg`` / ``.jpeg`` / ``.bmp``: one 2D image (``"image"``);
- ``file.h5:key``, ``file.h5:/a/b`` (also ``.hdf5``, ``.hdf``): an HDF5
  dataset (``"hdf5"``); without ``:key`` the file's only dataset, or the
  writer's default key;
- ``store.zarr``, ``store.zarr:key``, ``store.zarr/key``: a zarr store and an
  array (or group) inside it (``"zarr"``; ``image.ome.zarr`` too);
- ``volume.n5``, ``volume.n5:key``, ``volume.n5/key``: an N5 container (``"n5"``);
- a folder of 2D slices, or a PNG-folder output: a path without a suffix or
  an existing folder (``"folder"``).

The splitting rule: the path ends after the FIRST name in the text that ends
in a container extension (``.h5``, ``.hdf5``, ``.hdf``, ``.zarr``, ``.n5``,
any case) and is followed by the end of the text, ``:`` or, for the folder
containers zarr and N5 only, ``/``; everything after that separator is the
key. So a key may hold ``:`` (``em.h5:/t:0``) and a folder above the file may
too (``/runs/a:b/em.h5:raw``). Keys are stored without leading or trailing
``/`` (``"a/b"``; HDF5 and zarr read ``/a/b`` and ``a/b`` alike); an empty
key is None.

Text without a container extension is a plain path, with two cases where the
disk decides, both as the readers have always done: ``PATH:key`` whose
``PATH`` (before the last ``:``) exists while the whole text does not names a
store called otherwise (a zarr or N5 folder, or an HDF5 file found by its
signature); and an existing folder or file without a known suffix is
``"zarr"`` / ``"n5"`` by its metadata files, ``"hdf5"`` by its signature, or
else ``"folder"`` (folders only). A known file suffix decides the kind even
for an existing folder (a ``.tif`` output never replaces a folder).

Anything else (``notes.txt``, ``em.h5x:/raw``: a missing path with ``:`` after
a name with an unknown suffix) is refused in one line naming the spec.
"""

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIX = ".zarr"
N5_SUFFIX = ".n5"
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES + HDF5_SUFFIXES + (ZARR_SUFFIX, N5_SUFFIX)
KINDS = ("tiff", "image", "hdf5", "zarr", "n5", "folder")
FOLDER_CONTAINERS = ("zarr", "n5")

_CONTAINER_KINDS = {**{suffix: "hdf5" for suffix in HDF5_SUFFIXES},
                    ZARR_SUFFIX: "zarr", N5_SUFFIX: "n5"}
# a container extension that ends a name: followed by ":", "/" or the end of the text
_CONTAINER_END = re.compile(r"\.(?:h5|hdf5|hdf|zarr|n5)(?=:|/|$)", re.IGNORECASE)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")
N5_ATTRIBUTES = "attributes.json"
FORMS = ("a .tif/.tiff stack, a .png/.jpg/.bmp image, file.h5[:key] (.hdf5, .hdf), "
         "store.zarr[:key], volume.n5[:key] or a folder")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed file spec: where the data live and in which format.

    Attributes:
        path: Path of the file, folder or container (``file.h5``, ``store.zarr``).
        key: str dataset/array key inside an HDF5, zarr or N5 container,
            without leading or trailing ``/`` (``"volumes/raw"``), or None.
        kind: one of ``KINDS``: ``"tiff"``, ``"image"``, ``"hdf5"``,
            ``"zarr"``, ``"n5"`` or ``"folder"``.
    """

    path: Path
    key: Optional[str]
    kind: str

    @property
    def is_container(self):
        """True for the kinds that hold keyed datasets (HDF5, zarr, N5)."""
        return self.kind in ("hdf5",) + FOLDER_CONTAINERS

    def __str__(self):
        return f"{self.path}:/{self.key}" if self.key else str(self.path)


def parse_spec(text):
    """Parse a file spec into a ``Spec(path, key, kind)`` (the rule: module docstring).

    Args:
        text: str or Path, e.g. ``"em.h5:/volumes/raw"``, ``"X.TIF"``,
            ``"pred.zarr/0"``, ``"slices/"``.

    Returns:
        ``Spec``; ``spec.path`` keeps the case and spelling of the text.

    Raises:
        ValueError: an unknown extension (one line naming ``text``).

    Example:
    >>> parse_spec("sample_A.H5:/volumes/raw")
    Spec(path=PosixPath('sample_A.H5'), key='volumes/raw', kind='hdf5')
    >>> parse_spec("pred.zarr/0")
    Spec(path=PosixPath('pred.zarr'), key='0', kind='zarr')
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    container = _split_at_container(text)
    if container is not None:
        return container
    if ":" in text and not os.path.exists(text):
        head, key = text.rsplit(":", 1)
        kind = _existing_container_kind(Path(head)) if head else None
        if kind is not None:
            return Spec(Path(head), normalize_key(key), kind)
    path = Path(text)
    return Spec(path, None, _plain_kind(path, text))


def spec_kind(text):
    """``parse_spec(text).kind``, or None for a spec that ``parse_spec`` refuses."""
    try:
        return parse_spec(text).kind
    except ValueError:
        return None


def normalize_key(key):
    """``"/a//b/"`` and ``"a/b"`` -> ``"a/b"``; an empty key -> None."""
    if key is None:
        return None
    key = "/".join(part for part in str(key).split("/") if part)
    return key or None


def _split_at_container(text):
    """The Spec of a text naming a container by its extension, else None."""
    for match in _CONTAINER_END.finditer(text):
        kind = _CONTAINER_KINDS[match.group(0).lower()]
        rest = text[match.end():]
        if rest.startswith("/") and kind not in FOLDER_CONTAINERS:
            continue  # an HDF5 file is no folder: "x.h5/y" is a path below a folder x.h5
        if match.start() == 0 or text[match.start() - 1] == "/":
            continue  # ".zarr" alone is a hidden name, not a container
        return Spec(Path(text[:match.end()]), normalize_key(rest[1:]), kind)
    return None


def _plain_kind(path, text):
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    existing = _existing_container_kind(path)
    if existing is not None:
        return existing
    if path.is_dir():
        return "folder"
    head = Path(text.split(":", 1)[0])
    if ":" in text and head.suffix and not path.exists():  # "em.h5x:/raw": a key was meant
        raise ValueError(f"{text}: unknown file extension {head.suffix!r}; give {FORMS}")
    if not suffix:
        return "folder"
    raise ValueError(f"{text}: unknown file extension {path.suffix!r}; give {FORMS}")


def _existing_container_kind(path):
    """``"zarr"`` / ``"n5"`` for a folder by its metadata files, ``"hdf5"`` for a file by its
    signature, else None (also for a missing path)."""
    if path.is_dir():
        if any((path / name).exists() for name in _ZARR_METADATA):
            return "zarr"
        if (path / N5_ATTRIBUTES).is_file():
            return "n5"
        return None
    return "hdf5" if path.is_file() and has_hdf5_signature(path) else None


def has_hdf5_signature(path):
    """True if the file starts with the HDF5 signature (at byte 0, 512, 1024, ...)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset + len(_HDF5_SIGNATURE) <= size:
                handle.seek(offset)
                if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False
