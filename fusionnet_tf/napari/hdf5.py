"""HDF5 reader and writer: ``file.h5`` and ``file.h5:/key``, as the CLI reads and writes them.

napari's built-in reader does not open HDF5. The reader takes a file (every
2D/3D numeric dataset becomes a layer; napari itself only passes existing
paths) or, called directly, one dataset (``read_hdf5("file.h5:/key")``);
integer datasets of more than 16 bits (e.g. ``fusionnet segment``'s uint32
labels) become labels layers, the rest images. An affinity dataset (a 4D
(C, Z, Y, X) array, or ``kind = affinities`` in its attributes, as ``fusionnet
predict --model snemi3d`` writes it) becomes the affinity layer, its offsets
and other attributes in ``layer.metadata``, and its boundary map
(``affinities.affinity_layer_data``). The writers store a labels layer as
``fusionnet segment`` does (key ``segmentation``), a membrane probability
layer as ``fusionnet predict`` does (key ``prediction``) and an affinity layer
(offsets in its metadata) as ``predict`` writes affinities (key
``affinities``, offsets in the attributes), keeping the file's other datasets.
"""

from types import SimpleNamespace

import numpy as np

def get_reader(path):
    """npe2 reader command: a reader for an HDF5 ``path`` (or ``path:/key``), else None."""
    from fusionnet_tf.io.spec import parse_spec

    if isinstance(path, list):
        return None
    try:
        return read_hdf5 if parse_spec(path).kind == "hdf5" else None
    except ValueError:
        return None


def _layer_type(array):
    return "labels" if array.dtype.kind in "ui" and array.dtype.itemsize > 2 else "image"


def _dataset_keys(path):
    import h5py

    keys = []
    with h5py.File(path, "r") as handle:
        def visit(name, item):
            if isinstance(item, h5py.Dataset) and item.ndim in (2, 3, 4) \
                    and item.dtype.kind in "uifb":
                keys.append(name)

        handle.visititems(visit)
    return keys


def read_hdf5(path):
    """Layer data for ``file.h5`` (all 2D/3D datasets and affinities) or ``file.h5:/key`` (one).

    Returns:
        List of ``(data, {"name": key, ...}, "image" | "labels")``; an
        affinity dataset gives two (``affinities.affinity_layer_data``).

    Raises:
        FileNotFoundError / ValueError: as ``fusionnet_tf.data.read_stack``
            and ``affinity_io.read_affinities`` (an affinity dataset without
            offsets, offsets that do not match its channels).
    """
    from fusionnet_tf.data import read_stack
    from fusionnet_tf.data.affinity_io import affinity_metadata
    from fusionnet_tf.io.spec import parse_spec
    from fusionnet_tf.napari.affinities import read_affinity_file

    parsed = parse_spec(path)
    file_path, key = parsed.path, parsed.key
    keys = [key] if key else _dataset_keys(file_path)
    layers = []
    for name in keys:
        spec = f"{file_path}:{name}"
        if affinity_metadata(spec) is not None:
            layers.extend(read_affinity_file(spec, f"{file_path.stem}:{name.strip('/')}"))
            continue
        data = np.asarray(read_stack(spec, allow_bool=True))
        if len(data) == 1:
            data = data[0]
        layers.append((data, {"name": f"{file_path.stem}:{name.strip('/')}"}, _layer_type(data)))
    return layers


def write_labels_hdf5(path, data, meta):
    """npe2 writer: a labels layer -> ``path`` (``file.h5[:/key]``, key default segmentation)."""
    from fusionnet_tf.segmentation.io import write_labels

    write_labels(path, np.asarray(data), {"napari_layer": meta.get("name", "")})
    return [str(path)]


def write_image_hdf5(path, data, meta):
    """npe2 writer: a membrane probability layer (float in [0, 1]) -> ``path`` (key prediction).

    An affinity layer (``kind: affinities`` or offsets in its metadata, or 4D
    data) is written as affinities with its offsets (key ``affinities``).

    Raises:
        ValueError: data that is not a probability map (e.g. a raw EM image),
            an affinity layer without offsets.
    """
    from fusionnet_tf.inference.writers import write_prediction
    from fusionnet_tf.napari.affinities import holds_affinities, write_affinity_hdf5
    from fusionnet_tf.segmentation import check_membrane

    layer = SimpleNamespace(data=data, metadata=meta.get("metadata") or {})
    if holds_affinities(layer):
        return write_affinity_hdf5(path, data, meta)
    prob = check_membrane(np.asarray(data), f"layer '{meta.get('name', '')}'")
    write_prediction(path, prob, metadata={"napari_layer": meta.get("name", "")})
    return [str(path)]
