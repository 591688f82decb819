"""Write (and read back) prediction maps; every write is atomic.

Output formats, chosen by the path:

- ``pred.tif`` / ``pred.tiff``: multi-page TIFF, float32 (default) or uint8
  (probability x 255, rounded);
- ``pred.h5`` / ``pred.h5:/key`` (also ``.hdf5``, ``.hdf``): HDF5 dataset
  (default key ``prediction``), gzip-compressed, chunked per slice. Writing
  into an existing HDF5 file keeps everything else in it (e.g. the raw data
  the prediction was made from); a dataset already stored under ``key`` is
  replaced (with its attributes);
- a folder (a path without a suffix): one 8-bit PNG per slice,
  ``slice_0000.png``, ...;
- ``pred.png``: one 8-bit PNG (single-slice predictions only).

Files are written to a temporary file in the same folder, flushed to disk and
renamed when complete (``fusionnet_tf.io.outputs.atomic_path``); an existing
HDF5 file is first copied to that temporary file, so readers see the old file
or the new one, never a half-written dataset (this costs one copy of the file,
and changes others make to it meanwhile are lost). A PNG folder is written to
a temporary folder and renamed. Metadata (a JSON-able dict) goes into the TIFF
description, the HDF5 dataset attributes or ``prediction.json`` in a PNG
folder.
"""

import json
import re
from pathlib import Path

import numpy as np

# DTYPES: output dtypes; PRED_CONVENTIONS: how a stored probability map reads
# (high = membrane, or high = cell interior as in ISBI); both re-exported
from fusionnet_tf.checks import check_choice
from fusionnet_tf.choices import DTYPES, PRED_CONVENTIONS  # noqa: F401
from fusionnet_tf.io.files import write_hdf5, write_tiff
from fusionnet_tf.io.outputs import (atomic_path, check_hdf5_target, check_output_path,
                                     staged_folder)
from fusionnet_tf.io.spec import HDF5_SUFFIXES, TIFF_SUFFIXES, parse_spec  # noqa: F401

DEFAULT_HDF5_KEY = "prediction"


def to_isbi(membrane_prob):
    """ISBI submission convention: 1 - membrane probability (high = cell interior)."""
    return (1.0 - np.asarray(membrane_prob, np.float32)).astype(np.float32)


def to_uint8(prob):
    """Probability in [0, 1] -> uint8 0..255 (rounded, clipped)."""
    return np.round(np.clip(np.asarray(prob, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def _check_prob(prob):
    prob = np.asarray(prob)
    if prob.ndim == 2:
        prob = prob[None]
    if prob.ndim != 3 or 0 in prob.shape:
        raise ValueError(
            f"prediction must be (N, H, W) or (H, W) and non-empty; received shape {prob.shape}"
        )
    return prob


# a PNG-folder output holds only these names, so re-running a command may refresh it
_PNG_FOLDER_ENTRY = re.compile(r"^slice_\d{4,}\.png$|^prediction\.json$")


def is_png_folder_output(folder):
    """True if ``folder`` holds only what ``write_png_folder`` writes (an earlier output).

    Only such a folder (``slice_NNNN.png`` files and an optional
    ``prediction.json``, nothing else, no subfolders) may be replaced by a new
    PNG-folder output; any other folder of the user's is refused.
    """
    entries = list(Path(folder).iterdir())
    return bool(entries) and all(entry.is_file() and not entry.is_symlink()
                                 and _PNG_FOLDER_ENTRY.match(entry.name) for entry in entries)


def output_kind(path):
    """``"tiff"``, ``"hdf5"``, ``"png"`` or ``"png_folder"`` for an output spec.

    The spec is split by ``io.spec.parse_spec``.

    Raises:
        ValueError: for an unknown suffix or another kind (zarr, ``.jpg``).
    """
    try:
        spec = parse_spec(path)
    except ValueError:
        spec = None
    if spec is not None and spec.kind in ("tiff", "hdf5", "folder"):
        return "png_folder" if spec.kind == "folder" else spec.kind
    if spec is not None and spec.path.suffix.lower() == ".png":
        return "png"
    raise ValueError(
        f"output must be a .tif/.tiff, .h5[:/key], .png file or a folder; received {path}"
    )


def check_prediction_output(spec, option="--output"):
    """Fail early, before any prediction, if ``spec`` cannot be written (the output guard).

    Args:
        spec: the output spec.
        option: ``"--output"`` (any prediction format) or an overlay option
            (``"--overlay"``, ``"--segment-overlay"``: a ``.png`` or a folder
            only); named in the error messages.

    Returns:
        The output kind: ``"tiff"``, ``"hdf5"``, ``"png"`` or ``"png_folder"``.

    Raises:
        ValueError: unknown output format, an overlay that is not a ``.png``
            or folder, or an HDF5 target that cannot take the dataset.
        FileNotFoundError / PermissionError: missing or unwritable parent folder.
        FileExistsError: a PNG folder output over a folder that is not an
            earlier PNG-folder output (see ``io.outputs.check_output_path``).
        IsADirectoryError: a file output that names an existing folder.
    """
    kind = overlay_kind(spec, option) if option.endswith("overlay") else output_kind(spec)
    parsed = parse_spec(spec)
    check_output_path(parsed.path, f"{option} {spec}", folder_output=kind == "png_folder",
                      earlier_output=is_png_folder_output)
    if kind == "hdf5":
        check_hdf5_target(parsed.path, parsed.key or DEFAULT_HDF5_KEY)
    return kind


def overlay_kind(path, name="overlay"):
    """``"png"`` or ``"png_folder"`` for an overlay spec.

    Args:
        path: output spec: a ``.png`` file (one slice) or a folder.
        name: what to call ``path`` in the error message (e.g. ``"--overlay"``).

    Raises:
        ValueError: for anything else (``.tif``, ``.h5``, ``.jpg``, ...):
            overlays are RGB PNGs.
    """
    try:
        spec = parse_spec(path)
    except ValueError:
        spec = None
    if spec is not None and spec.kind == "image" and spec.path.suffix.lower() == ".png":
        return "png"
    if spec is not None and spec.kind == "folder":
        return "png_folder"
    raise ValueError(
        f"{name} {path}: overlays are written as RGB PNGs; give a .png file (one slice) or a "
        f"folder (one PNG per slice)"
    )


def write_prediction(path, membrane_prob, dtype="float32", isbi=False, metadata=None):
    """Write a probability map atomically; the format follows ``path``.

    Args:
        path: output spec (see module docstring).
        membrane_prob: (N, H, W) or (H, W) float array in [0, 1], 1 = membrane.
        dtype: ``"float32"`` or ``"uint8"`` (x 255) for TIFF and HDF5; PNG is
            always uint8. Defaults to ``"float32"``.
        isbi: bool. Write 1 - membrane probability (high = cell interior), the
            ISBI 2012 submission convention. Defaults to False.
        metadata: optional JSON-able dict stored with the data.

    Returns:
        Path of the written file or folder.

    Raises:
        ValueError: unknown dtype or format, a multi-slice ``.png``, or an
            HDF5 target that ``check_hdf5_target`` refuses.
        FileNotFoundError / PermissionError: missing or read-only folder.
        FileExistsError: a PNG output folder that is neither empty nor an earlier output.

    Example:
    >>> write_prediction("pred.tif", predictor.predict(images))
    """
    check_choice("dtype", dtype, DTYPES)
    prob = _check_prob(membrane_prob).astype(np.float32)
    if isbi:
        prob = to_isbi(prob)
    data = to_uint8(prob) if dtype == "uint8" else prob
    metadata = dict(metadata or {}, convention="isbi" if isbi else "membrane", dtype=dtype)
    kind = output_kind(path)
    if kind == "tiff":
        return write_tiff(Path(path), data, metadata)
    if kind == "hdf5":
        spec = parse_spec(path)
        return write_hdf5(spec.path, spec.key or DEFAULT_HDF5_KEY, data, metadata)
    if kind == "png":
        if len(prob) != 1:
            raise ValueError(
                f"a .png output holds one slice; received {len(prob)} slices. Give a folder "
                f"or a .tif instead of {path}"
            )
        return _write_png(Path(path), to_uint8(prob[0]))
    return write_png_folder(Path(path), to_uint8(prob), metadata)


def _png_bytes_writer(path, image):
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def _write_png(path, image):
    check_output_path(path, f"output {path}")
    with atomic_path(path, fsync=True) as tmp:
        _png_bytes_writer(tmp, image)
    return path


def write_png_folder(folder, slices, metadata=None):
    """Write uint8 slices as ``slice_0000.png``... into a folder, atomically.

    Args:
        folder: Path of a folder that does not exist, is empty or is an
            earlier PNG-folder output (``is_png_folder_output``; it is
            replaced as a whole).
        slices: (N, H, W) uint8 (or (N, H, W, 3) RGB) array.
        metadata: optional dict written to ``prediction.json``.

    Returns:
        ``folder``.

    Raises:
        FileExistsError: ``folder`` exists and is neither empty nor an earlier output.
        FileNotFoundError / PermissionError: if its parent is missing or read-only.
    """
    folder = Path(folder)
    check_output_path(folder, f"output {folder}", folder_output=True,
                      earlier_output=is_png_folder_output)
    with staged_folder(folder) as tmp:
        for index, image in enumerate(slices):
            _png_bytes_writer(tmp / f"slice_{index:04d}.png", np.asarray(image))
        if metadata is not None:
            (tmp / "prediction.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def overlay(image, membrane_prob, threshold=0.5, color=(255, 0, 0), alpha=0.6):
    """RGB overlay of predicted membranes on a greyscale image.

    Args:
        image: (H, W) float array in [0, 1] (normalized EM image).
        membrane_prob: (H, W) float array in [0, 1].
        threshold: float. Pixels with probability > threshold are tinted.
        color: RGB tint of membranes. Defaults to red.
        alpha: float. Opacity of the tint. Defaults to 0.6.

    Returns:
        (H, W, 3) uint8 array.
    """
    image = np.asarray(image, np.float32)
    membrane_prob = np.asarray(membrane_prob, np.float32)
    if image.shape != membrane_prob.shape or image.ndim != 2:
        raise ValueError(
            "`image` and `membrane_prob` must be 2D arrays of the same shape; received "
            f"{image.shape} and {membrane_prob.shape}"
        )
    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
    tint = np.asarray(color, np.float32) / 255.0
    mask = (membrane_prob > threshold)[..., None]
    rgb = np.where(mask, (1 - alpha) * grey + alpha * tint, grey)
    return to_uint8(rgb)


def write_overlays(path, images, membrane_prob, threshold=0.5):
    """Write image + predicted membrane overlays as PNG (a file or a folder).

    Args:
        path: ``.png`` file (single slice) or a folder (one PNG per slice).
        images: (N, H, W) or (H, W) float array in [0, 1].
        membrane_prob: same shape, membrane probability.
        threshold: float. Membrane where probability > threshold.

    Returns:
        Path of the written file or folder.

    Raises:
        ValueError: ``path`` is neither a ``.png`` nor a folder (see
            ``overlay_kind``), or a ``.png`` for several slices.
        FileExistsError: a folder that is neither empty nor an earlier output.
    """
    kind = overlay_kind(path)
    images = _check_prob(images)
    membrane_prob = _check_prob(membrane_prob)
    rgb = np.stack([overlay(i, p, threshold) for i, p in zip(images, membrane_prob)])
    if kind == "png":
        if len(rgb) != 1:
            raise ValueError(
                f"a .png overlay holds one slice; received {len(rgb)} slices; give a folder"
            )
        return _write_png(Path(path), rgb[0])
    return write_png_folder(Path(path), rgb)


def read_probability_map(spec, convention="membrane"):
    """Read a saved probability map as float32 membrane probability.

    Args:
        spec: anything ``fusionnet_tf.data.read_stack`` accepts (TIFF, PNG,
            folder, ``file.h5:/key``).
        convention: ``"membrane"`` (high = membrane) or ``"isbi"``
            (high = cell interior; converted with 1 - p).

    Returns:
        (N, H, W) float32 in [0, 1], 1 = membrane. uint8 maps are divided by
        255; bool maps count as 0/1; float maps must already be in [0, 1].

    Raises:
        ValueError: for an unknown convention, another integer dtype, or
            float values outside [0, 1].
    """
    from fusionnet_tf.data import read_stack

    return membrane_from_array(read_stack(spec, allow_bool=True), spec, convention)


def membrane_from_array(data, spec, convention="membrane"):
    """Convert a stored probability array to float32 membrane probability.

    Args:
        data: array as stored: float in [0, 1], uint8 0-255 or bool.
        spec: the file it came from (named in errors).
        convention: ``"membrane"`` or ``"isbi"`` (see ``read_probability_map``).

    Returns:
        float32 array of ``data``'s shape in [0, 1], 1 = membrane.

    Raises:
        ValueError: unknown convention, another integer dtype, NaN/inf or
            float values outside [0, 1].
    """
    if convention not in PRED_CONVENTIONS:
        raise ValueError(
            f"prediction convention must be 'membrane' or 'isbi'; received {convention!r}"
        )
    data = np.asarray(data)
    if data.dtype == np.uint8:
        prob = data.astype(np.float32) / 255.0
    elif data.dtype == bool:
        prob = data.astype(np.float32)
    elif np.issubdtype(data.dtype, np.floating):
        prob = data.astype(np.float32)
        if not np.all(np.isfinite(prob)):
            raise ValueError(f"prediction {spec}: contains NaN or infinite values")
        if prob.min() < 0 or prob.max() > 1:
            raise ValueError(
                f"prediction {spec}: float values must be in [0, 1]; received range "
                f"[{prob.min()}, {prob.max()}]"
            )
    else:
        raise ValueError(
            f"prediction {spec}: expected float in [0, 1] or uint8 0-255; received dtype "
            f"{data.dtype} (an integer label image is not a probability map)"
        )
    return 1.0 - prob if convention == "isbi" else prob
