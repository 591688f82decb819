"""Affinity layers: (C, Z, Y, X) affinities in the viewer, with their offsets (NumPy only, no Qt).

A 3D affinity model (``--model snemi3d``) predicts one channel per offset
``(dz, dy, dx)`` (see ``fusionnet_tf.data.affinity_io``). In napari they
become two image layers:

- "<name> affinities": the (C, Z, Y, X) float32 array as one layer (the
  first slider picks the channel), hidden at first, with
  ``layer.metadata = {"kind": "affinities", "offsets": [[dz, dy, dx], ...],
  ...}``: the layer the "Segment neurons" widget segments and the HDF5
  writer saves, so the offsets stay with the data;
- "<name> boundaries": (Z, Y, X) ``1 - mean nearest-neighbour affinity``
  (``segmentation.affinities.boundary_map``, the map the fragments are
  flooded on), shown like a membrane map over the EM image: what one looks
  at to judge the prediction. Ten channel layers (napari's
  ``channel_axis``) would bury the image and lose the offsets' grouping.

The same pair comes from Predict and from the readers (``aff.h5``,
``aff.zarr``), so a saved prediction opens as it was made.
"""

import numpy as np

AFFINITY_SUFFIX = " affinities"
BOUNDARY_SUFFIX = " boundaries"
KIND = "affinities"


def affinity_metadata(offsets, extra=None):
    """Layer metadata of affinities: ``extra`` plus ``kind`` and the offsets as lists."""
    return dict(extra or {}, kind=KIND, offsets=[[int(v) for v in o] for o in offsets])


def holds_affinities(layer):
    """True if ``layer`` is meant as affinities: affinity metadata, or 4D data."""
    metadata = getattr(layer, "metadata", None) or {}
    return (metadata.get("kind") == KIND or "offsets" in metadata
            or np.ndim(getattr(layer, "data", None)) == 4)


def layer_affinities(layer):
    """The checked affinities of an affinity layer.

    Args:
        layer: a napari image layer with (C, Z, Y, X) float data in [0, 1]
            and ``metadata["offsets"]``.

    Returns:
        ``(affs, offsets)``: (C, Z, Y, X) float32 and C ``(dz, dy, dx)`` tuples.

    Raises:
        ValueError: one line naming the layer: no offsets in its metadata,
            offsets that do not match the channels, another shape, dtype or
            range (``affinity_io.check_affinities``).
    """
    from fusionnet_tf.data.affinity_io import check_affinities

    name = f"affinity layer '{layer.name}'"
    if getattr(layer, "multiscale", False):
        raise ValueError(f"{name} is multiscale; give a single-scale layer")
    offsets = (getattr(layer, "metadata", None) or {}).get("offsets")
    if offsets is None:
        raise ValueError(f"{name} (shape {np.shape(layer.data)}) has no offsets in its "
                         "metadata; open the affinity file with the fusionnet-tf reader (.h5, "
                         ".zarr) or predict it with the Predict widget")
    return check_affinities(np.asarray(layer.data), offsets, name)


def affinity_layer_data(name, affs, offsets, metadata=None):
    """The two layers of an affinity prediction, as napari layer-data tuples.

    Args:
        name: the base name (the image's layer name, or the file's).
        affs: (C, Z, Y, X) float32 in [0, 1].
        offsets: the C offsets ``(dz, dy, dx)``.
        metadata: more metadata for the affinity layer (model, tiles, ...).

    Returns:
        ``[(affs, kwargs, "image"), (boundary, kwargs, "image")]``: the
        (C, Z, Y, X) affinities (hidden, offsets in ``metadata``) and the
        (Z, Y, X) float32 boundary map (1 - mean nearest-neighbour affinity).

    Raises:
        ValueError: affinities without an in-plane or z nearest-neighbour offset.
    """
    from fusionnet_tf.segmentation.affinities import boundary_map

    boundary = boundary_map(affs, [tuple(o) for o in offsets]).astype(np.float32, copy=False)
    return [
        (affs, {"name": name + AFFINITY_SUFFIX, "metadata": affinity_metadata(offsets, metadata),
                "colormap": "gray", "contrast_limits": (0.0, 1.0), "visible": False}, "image"),
        (boundary, {"name": name + BOUNDARY_SUFFIX, "colormap": "magma",
                    "contrast_limits": (0.0, 1.0), "blending": "additive", "opacity": 0.6},
         "image"),
    ]


def read_affinity_file(spec, name):
    """Layer-data tuples (``affinity_layer_data``) of an affinity file ``spec``.

    The file's metadata (model, tiles, ...) is kept in the affinity layer's
    ``metadata``, with ``kind`` and ``offsets``.

    Raises:
        ValueError / FileNotFoundError: as ``affinity_io.read_affinities``
            (one line: no offsets, offsets that do not match the channels).
    """
    from fusionnet_tf.data.affinity_io import affinity_metadata as file_metadata
    from fusionnet_tf.data.affinity_io import read_affinities

    affs, offsets = read_affinities(spec)
    extra = {key: _plain(value) for key, value in (file_metadata(spec) or {}).items()}
    return affinity_layer_data(name, affs, offsets, dict(extra, source=str(spec)))


def _plain(value):
    """NumPy scalars and arrays in file attributes as plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def get_zarr_reader(path):
    """npe2 reader command: a reader for an affinity zarr store (``aff.zarr``), else None.

    Other zarr stores are left to napari's own reader.
    """
    from fusionnet_tf.data.affinity_io import affinity_metadata as file_metadata
    from fusionnet_tf.io.spec import parse_spec, spec_kind

    if isinstance(path, list) or spec_kind(path) != "zarr" or parse_spec(path).key:
        return None
    return read_zarr_affinities if file_metadata(str(path).rstrip("/")) else None


def read_zarr_affinities(path):
    """Layer data of an affinity zarr store: the affinities and their boundary map."""
    from pathlib import Path

    spec = str(path).rstrip("/")
    return read_affinity_file(spec, Path(spec).stem)


def write_affinity_hdf5(path, data, meta):
    """Write an affinity layer's data with its offsets to ``path`` (``.h5[:/key]``).

    Returns:
        ``[path]``.

    Raises:
        ValueError: no offsets in the layer's metadata, or bad affinities.
    """
    from fusionnet_tf.data.affinity_io import write_affinities

    metadata = dict(meta.get("metadata") or {})
    offsets = metadata.pop("offsets", None)
    if offsets is None:
        raise ValueError(f"layer '{meta.get('name', '')}' has no affinity offsets in its "
                         "metadata")
    metadata.pop("kind", None)
    extra = {key: value for key, value in metadata.items()
             if isinstance(value, (str, int, float, bool, list))}
    write_affinities(path, np.asarray(data), offsets, dict(extra, napari_layer=meta.get("name",
                                                                                         "")))
    return [str(path)]
