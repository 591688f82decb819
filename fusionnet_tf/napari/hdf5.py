"""HDF5 reader and writer: ``file.h5`` and ``file.h5:/key``, as the CLI reads and writes them.

napari's built-in reader does not open HDF5. The reader takes a file (every
2D/3D numeric dataset becomes a layer; napari itself only passes existing
paths) or, called directly, one dataset (``read_hdf5("file.h5:/key")``);
integer datasets of more than 16 bits (e.g. ``fusionnet segment``'s uint32
labels) become labels layers, the rest images. The writers store a labels
layer as ``fusionnet segment`` does (key ``segmentation``) and a membrane
probability layer as ``fusionnet predict`` does (key ``prediction``), keeping
the file's other datasets.
"""

import numpy as np

def get_reader(path):
    """npe2 reader command: a reader for an HDF5 ``path`` (or ``path:/key``), else None."""
    from fusionnet_tf.data.readers import split_hdf5_spec

    if isinstance(path, list) or split_hdf5_spec(path) is None:
        return None
    return read_hdf5


def _layer_type(array):
    return "labels" if array.dtype.kind in "ui" and array.dtype.itemsize > 2 else "image"


def _dataset_keys(path):
    import h5py

    keys = []
    with h5py.File(path, "r") as handle:
        def visit(name, item):
            if isinstance(item, h5py.Dataset) and item.ndim in (2, 3) and item.dtype.kind in "uifb":
                keys.append(name)

        handle.visititems(visit)
    return keys


def read_hdf5(path):
    """Layer data for ``file.h5`` (all 2D/3D datasets) or ``file.h5:/key`` (one).

    Returns:
        List of ``(data, {"name": key}, "image" | "labels")``.

    Raises:
        FileNotFoundError / ValueError: as ``fusionnet_tf.data.read_stack``.
    """
    from fusionnet_tf.data import read_stack
    from fusionnet_tf.data.readers import split_hdf5_spec

    file_path, key = split_hdf5_spec(path)
    keys = [key] if key else _dataset_keys(file_path)
    layers = []
    for name in keys:
        data = np.asarray(read_stack(f"{file_path}:{name}", allow_bool=True))
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

    Raises:
        ValueError: data that is not a probability map (e.g. a raw EM image).
    """
    from fusionnet_tf.inference.writers import write_prediction
    from fusionnet_tf.segmentation import check_membrane

    prob = check_membrane(np.asarray(data), f"layer '{meta.get('name', '')}'")
    write_prediction(path, prob, metadata={"napari_layer": meta.get("name", "")})
    return [str(path)]
