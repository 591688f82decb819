"""Label conventions: everything becomes a uint8 membrane map (1 = membrane).

The training target of FusionNet is membrane (boundary) probability:
1 = membrane/boundary, 0 = cell interior. Label files come in two conventions:

- ``"isbi"``: ISBI 2012 "in-out" labels, 255 (or any nonzero value) = cell
  interior, 0 = membrane. Membrane target = ``label == 0``.
- ``"membrane"``: nonzero = membrane, 0 = interior. Membrane target =
  ``label != 0``.

Label files must be binary: at most two distinct values, one of them 0. Files
with more values (e.g. JPEG artefacts, soft labels) raise a ``ValueError``
that lists the values found, unless you pass ``threshold``: then a pixel is
"nonzero" when ``label > threshold``.
"""

import numpy as np

from fusionnet_tf.choices import LABEL_CONVENTIONS  # noqa: F401 (re-exported)
from fusionnet_tf.data.readers import read_stack


def check_convention(convention):
    """Return ``convention`` if known, else raise ValueError naming it."""
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(
            f"label convention must be one of {', '.join(LABEL_CONVENTIONS)}; received {convention!r}"
        )
    return convention


def _nonzero_mask(labels, threshold, name):
    if threshold is not None:
        return labels > threshold
    values = np.unique(labels)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if values.size > 4 else "")
        raise ValueError(
            f"{name}: labels must be binary (0 and one other value); found {values.size} values: "
            f"[{shown}]; pass threshold=T to binarize as label > T"
        )
    return labels != 0


def to_membrane(labels, convention="isbi", threshold=None, name="labels"):
    """Convert a label array to the membrane target.

    Args:
        labels: (N, H, W) or (H, W) integer, bool or float array.
        convention: ``"isbi"`` (0 = membrane) or ``"membrane"`` (nonzero = membrane).
        threshold: optional number; if given, values ``> threshold`` count as
            nonzero and any number of distinct values is accepted.
        name: used in error messages (e.g. the file name).

    Returns:
        uint8 array of the same shape, values in {0, 1}, 1 = membrane.

    Raises:
        ValueError: unknown convention, or non-binary labels without ``threshold``.

    Example:
    >>> to_membrane(np.array([[0, 255]]), "isbi")
    array([[1, 0]], dtype=uint8)
    """
    check_convention(convention)
    labels = np.asarray(labels)
    nonzero = _nonzero_mask(labels, threshold, name)
    membrane = ~nonzero if convention == "isbi" else nonzero
    return membrane.astype(np.uint8)


def read_labels(spec, convention="isbi", threshold=None):
    """Read a label stack and convert it to the membrane target.

    Args:
        spec: any spec ``read_stack`` accepts (TIFF stack, image, folder,
            ``file.h5:/key``) or an array. Boolean data (e.g. an HDF5 bool
            mask) counts as 0/1.
        convention: ``"isbi"`` (default; 0 = membrane, 255 = interior) or
            ``"membrane"`` (nonzero = membrane).
        threshold: optional; binarize as ``label > threshold`` instead of
            requiring exactly two values.

    Returns:
        uint8 array (N, H, W) with values in {0, 1}, 1 = membrane.

    Raises:
        FileNotFoundError / ValueError: as ``read_stack``; ValueError for
            non-binary labels (the message lists the values found) or an
            unknown convention.

    Example:
    >>> y = read_labels("train-labels.tif")          # ISBI: 1 where label == 0
    >>> y.mean()                                     # about 0.22
    """
    check_convention(convention)
    name = "array" if isinstance(spec, np.ndarray) else str(spec)
    labels = read_stack(spec, allow_bool=True)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    return to_membrane(labels, convention, threshold, name)
