"""The membrane-map path of block-wise segmentation: open, check, read and segment.

A membrane map is a ``(Z, Y, X)`` float probability in [0, 1] (1 = membrane)
or uint8 probability x 255, e.g. ``predict-volume``'s output. It is read as
float32 with ``inference.writers.membrane_from_array``'s rules, and each
block region is segmented like in-memory ``segment`` in its mode.
"""

import numpy as np

from fusionnet_tf.data.readers import close_stack
from fusionnet_tf.segmentation.segmenter import segment_array, stack_slices
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.executors import run_tasks


def open_membrane_input(input_spec):
    """``(shape (Z, Y, X), dtype, name, None)`` of a membrane map; refuses bad dtypes.

    Raises:
        ValueError: an integer map other than uint8 (``membrane_from_array``'s rules).
    """
    from fusionnet_tf.inference.writers import membrane_from_array

    volume, name = storage.open_volume(input_spec)
    shape, dtype = tuple(int(n) for n in volume.shape), np.dtype(volume.dtype)
    close_stack(volume)
    membrane_from_array(np.zeros(1, dtype), name)  # integer maps fail before any work
    return shape, dtype, name, None


def check_membrane_volume(input_spec, blocks, executor, progress=False):
    """Pass 0: refuse a map of another dtype, with NaN/inf or outside [0, 1].

    Uses the same rules as ``fusionnet_tf.inference.writers.membrane_from_array``
    (float in [0, 1], uint8 = probability x 255, bool), from per-block minima
    and maxima computed by the executor.

    Raises:
        ValueError: naming the input and the values found.
    """
    from fusionnet_tf.inference.writers import membrane_from_array
    from fusionnet_tf.volumes.blockwise import range_task

    _, dtype, name, _ = open_membrane_input(input_spec)  # dtype rules
    if not np.issubdtype(dtype, np.floating):
        return
    results, failures = run_tasks(executor, range_task, [(input_spec, block) for block in blocks],
                                  progress, "segment-volume: check")
    if failures:
        raise failures[0][1]
    # NaN anywhere in a block makes its min NaN
    extremes = np.concatenate([result[1] for _, result in results]
                              + [result[2] for _, result in results])
    extremes = extremes[~np.isfinite(extremes)][:1] if not np.isfinite(extremes).all() else \
        np.array([extremes.min(), extremes.max()])
    membrane_from_array(extremes.astype(dtype), name)


def read_membrane_region(input_spec, region):
    """Read a region of the input as float32 membrane probability (uint8 = x/255)."""
    from fusionnet_tf.inference.writers import membrane_from_array

    volume, name = storage.open_volume(input_spec)
    try:
        raw = np.asarray(volume[tuple(slice(*r) for r in region)])
    finally:
        close_stack(volume)
    return membrane_from_array(raw, name)


def segment_membrane_region(membrane, params, kind):
    """Labels 1..K of a (z, y, x) float32 membrane map region, as in-memory ``segment``.

    ``kind`` ``"3d"``: one 3D watershed (``segment_array``, z sampled by
    ``params.anisotropy``); ``"2d"`` and ``"linked"``: each section on its own
    (``stack_slices``; ids unique over sections).
    """
    if kind == "3d":
        labels, _ = segment_array(membrane, params, sampling=(params.anisotropy, 1.0, 1.0))
    else:
        labels, _ = stack_slices(membrane, params)
    return labels
