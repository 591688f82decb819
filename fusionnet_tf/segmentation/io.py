"""Read membrane maps and label images; write label images and overlays atomically.

Membrane maps (``fusionnet segment PRED``) are read from anything
``fusionnet predict`` writes: TIFF, HDF5 ``file.h5:/key``, PNG or a folder of
PNGs, plus zarr (``volume.zarr`` or ``volume.zarr:/key``, what
``predict-volume`` writes). Float maps must lie in [0, 1]; uint8 maps are
probability x 255 (``predict --dtype uint8``); any other integer type is
refused, since it is almost always a label image given by mistake.

Label images are written as:

- ``labels.tif``: multi-page uint32 TIFF (what Fiji and napari read);
- ``labels.h5[:/key]``: HDF5 dataset (key default ``segmentation``), uint32 or
  uint64 when the ids need it; other datasets in the file are kept;
- ``labels.zarr``: a uint64 zarr array at the store root, one chunk per slice.

Every write goes to a temporary file or folder that is renamed when complete
(``fusionnet_tf.io.files``). Specs are split by ``io.spec.parse_spec``.
"""

from pathlib import Path

import numpy as np

from fusionnet_tf.io.files import write_hdf5, write_tiff, write_zarr
from fusionnet_tf.io.outputs import check_output_path, zarr_attributes
from fusionnet_tf.io.spec import parse_spec
from fusionnet_tf.segmentation.segmenter import label_dtype

DEFAULT_HDF5_KEY = "segmentation"


def read_membrane(spec, convention="membrane"):
    """Read a membrane probability map as float32 (N, H, W) in [0, 1].

    Args:
        spec: TIFF, PNG, folder, ``file.h5:/key`` or zarr spec.
        convention: ``"membrane"`` (high = membrane) or ``"isbi"`` (high =
            cell interior, ``predict --isbi``).

    Raises:
        FileNotFoundError: missing file.
        ValueError: integer type other than uint8, NaN/inf, values outside
            [0, 1] (naming ``spec``).
    """
    from fusionnet_tf.inference.writers import read_probability_map

    return read_probability_map(spec, convention)


# a membrane map is mostly near 0 (cell interior) or 1 (membrane); an EM image is mostly grey
MID_GREY = (0.15, 0.85)
RAW_IMAGE_SHARE = 0.5


def raw_image_warning(membrane, spec):
    """A one-line warning if ``membrane`` looks like a raw EM image, else None.

    A probability map from ``fusionnet predict`` has few mid-grey pixels
    (the shipped example's map: 12%); an EM image read as a map has most of
    its pixels there (the shipped example itself: 95%).

    Args:
        membrane: (N, H, W) float32 membrane probability in [0, 1].
        spec: the PRED file, named in the warning.

    Returns:
        str or None.
    """
    membrane = np.asarray(membrane)
    step = max(1, membrane.size // 1_000_000)  # a sample is enough for a share
    values = membrane.reshape(-1)[::step]
    share = float(np.mean((values > MID_GREY[0]) & (values < MID_GREY[1])))
    if share <= RAW_IMAGE_SHARE:
        return None
    return (f"PRED {spec} looks like a raw EM image, not a membrane probability map "
            f"({share:.0%} of its pixels are mid-grey); segment what 'fusionnet predict' "
            f"writes, e.g. fusionnet predict {spec} -o membranes.tif --segment neurons.tif")


def read_segments(spec, option="--seg"):
    """Read a label image (TIFF, HDF5, zarr, PNG folder) as an integer (N, H, W) array.

    Raises:
        ValueError: a float or bool image (naming ``option`` and ``spec``).
    """
    from fusionnet_tf.data import read_stack

    data = np.asarray(read_stack(spec, allow_bool=True))
    if data.dtype == bool or not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{option} {spec}: a label image must have an integer type (one id per "
                         f"segment); received dtype {data.dtype}")
    if data.ndim == 2:
        data = data[None]
    return data


def label_kind(spec):
    """``"tiff"``, ``"hdf5"`` or ``"zarr"`` for a label output spec.

    Raises:
        ValueError: any other suffix, naming ``spec``.
    """
    from fusionnet_tf.io.ome_zarr import is_ome_zarr_name

    if is_ome_zarr_name(spec):
        return "ome-zarr"
    try:
        parsed = parse_spec(spec)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.kind == "zarr":
        if parsed.key is not None:
            raise ValueError(f"labels output {spec}: a zarr output is a whole store (e.g. "
                             f"neurons.zarr), not a key inside one")
        return "zarr"
    kind = parsed.kind if parsed is not None else None
    if kind not in ("tiff", "hdf5"):
        raise ValueError(f"labels output {spec}: give a .tif/.tiff (uint32), .h5[:/key] or "
                         f".zarr path")
    return kind


# the zarr attribute that marks a store as a label output of 'fusionnet segment'
LABELS_ATTRS_KEY = "fusionnet_segment"


def is_label_store(path):
    """True if ``path`` is a zarr store that ``write_labels`` wrote (an earlier output).

    Reads the store's metadata JSON only (no zarr import). Only such a store
    may be replaced by a new label output; any other folder or zarr store
    (e.g. a user's group with ``raw`` and ``pred``) is refused.
    """
    return LABELS_ATTRS_KEY in zarr_attributes(path)


def check_label_output(spec, option="labels output"):
    """Fail before any work if the label output ``spec`` cannot be written (the output guard).

    Args:
        spec: the label output spec.
        option: how messages name it, e.g. ``"--output"`` or ``"--segment"``.

    Returns:
        ``label_kind(spec)``.
    """
    from fusionnet_tf.io.outputs import check_hdf5_target

    kind = label_kind(spec)
    if kind == "ome-zarr":
        from fusionnet_tf.io.ome_zarr import check_output

        check_output(spec, "segment", option)
        return kind
    parsed = parse_spec(spec)
    path, key = parsed.path, parsed.key
    check_output_path(path, f"{option} {spec}", folder_output=kind == "zarr",
                      earlier_output=is_label_store)
    if kind == "hdf5":
        check_hdf5_target(path, key or DEFAULT_HDF5_KEY)
    return kind


def stored_label_dtype(spec, max_id):
    """The dtype ``write_labels`` stores ids up to ``max_id`` as in ``spec``'s format."""
    kind = label_kind(spec)
    return np.dtype(np.uint64 if kind == "zarr" else
                    np.uint32 if kind == "tiff" else label_dtype(max_id))  # hdf5, ome-zarr


def write_labels(spec, labels, metadata=None, ome_plan=None):
    """Write an (N, H, W) label image atomically; the format follows ``spec``.

    Args:
        spec: ``.tif``/``.tiff``, ``.h5[:/key]`` or ``.zarr`` path.
        labels: (N, H, W) or (H, W) non-negative integer array.
        metadata: optional JSON-able dict (TIFF description, HDF5 attributes
            or zarr attributes).
        ome_plan: ``io.ome_zarr.OutputPlan`` of a ``*.ome.zarr`` output (None:
            its defaults, NGFF 0.5, voxel size 1).

    Returns:
        Path written.

    Raises:
        ValueError: unknown format, or ids beyond uint32 for a TIFF.
    """
    labels = np.asarray(labels)
    labels = labels[None] if labels.ndim == 2 else labels
    max_id = int(labels.max()) if labels.size else 0
    metadata = dict(metadata or {}, max_id=max_id)
    kind = label_kind(spec)
    labels = labels.astype(stored_label_dtype(spec, max_id))
    if kind == "tiff":
        if label_dtype(max_id) != np.uint32:
            raise ValueError(f"labels output {spec}: ids up to {max_id} do not fit a uint32 "
                             f"TIFF; write .h5 or .zarr")
        return write_tiff(Path(spec), labels, metadata)
    if kind == "hdf5":
        parsed = parse_spec(spec)
        return write_hdf5(parsed.path, parsed.key or DEFAULT_HDF5_KEY, labels, metadata)
    if kind == "ome-zarr":
        from fusionnet_tf.io import ome_zarr

        plan = ome_plan or ome_zarr.OutputPlan(kind="labels", command="segment")
        return ome_zarr.write_ome_zarr(spec, labels, plan)
    path = Path(spec)  # a uint64 array at the store root, one chunk per slice
    return write_zarr(path, labels, {LABELS_ATTRS_KEY: metadata},
                      what=f"labels output {path}", earlier_output=is_label_store)


def label_colours(labels, seed=0):
    """A fixed pseudo-random RGB colour per id; id 0 is black.

    Args:
        labels: int array.
        seed: int mixed into the colour hash.

    Returns:
        float32 array ``labels.shape + (3,)`` in [0.15, 1].
    """
    ids = np.asarray(labels).astype(np.uint64)
    mixed = (ids + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)  # golden-ratio hash
    channels = [((mixed >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.float32) / 255.0
                for shift in (16, 32, 48)]
    colours = 0.15 + 0.85 * np.stack(channels, axis=-1)
    colours[ids == 0] = 0.0
    return colours


def label_overlay(image, labels, alpha=0.45):
    """RGB overlay of segments in random colours over a greyscale image.

    Args:
        image: (H, W) float image in [0, 1].
        labels: (H, W) int labels of the same shape.
        alpha: float opacity of the colours. Defaults to 0.45.

    Returns:
        (H, W, 3) uint8; segment boundaries are drawn dark.
    """
    from skimage.segmentation import find_boundaries

    from fusionnet_tf.inference.writers import to_uint8

    image = np.asarray(image, np.float32)
    if image.shape != np.shape(labels) or image.ndim != 2:
        raise ValueError(f"`image` and `labels` must be 2D arrays of the same shape; received "
                         f"{image.shape} and {np.shape(labels)}")
    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
    rgb = (1 - alpha) * grey + alpha * label_colours(labels)
    rgb[find_boundaries(labels, mode="inner")] *= 0.35
    return to_uint8(rgb)


def write_label_overlays(folder, images, labels):
    """Write one overlay PNG per slice into a new folder (``slice_0000.png``, ...)."""
    from fusionnet_tf.inference.writers import write_png_folder

    rgb = np.stack([label_overlay(image, slice_labels)
                    for image, slice_labels in zip(images, labels)])
    return write_png_folder(Path(folder), rgb)
