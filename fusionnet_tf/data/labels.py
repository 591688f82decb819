"""Label conventions: everything becomes a uint8 membrane map (1 = membrane).

The training target of FusionNet is membrane (boundary) probability:
1 = membrane/boundary, 0 = cell interior. Label files come in two conventions:

- ``"isbi"``: ISBI 2012 "in-out" labels, 255 (or any nonzero value) = cell
  interior, 0 = membrane. Membrane target = ``label == 0``.
- ``"membrane"``: nonzero = membrane, 0 = interior. Membrane target =
  ``label != 0``.
- ``"instance"``: one integer id per cell (2D or 3D ids, e.g. SNEMI3D), 0 =
  gap between cells; ids often touch with no 0 between them. Membrane target
  = ``instance_boundaries(labels, boundary_width)``: 0 pixels and, where two
  ids touch, a line ``boundary_width`` pixels wide (see there).

Binary label files ("isbi", "membrane") must have at most two distinct values, one of them 0. Files
with more values (e.g. JPEG artefacts, soft labels) raise a ``ValueError``
that lists the values found, unless you pass ``threshold``: then a pixel is
"nonzero" when ``label > threshold``.
"""

import numpy as np
from scipy import ndimage

from fusionnet_tf.checks import check_choice
from fusionnet_tf.choices import LABEL_CONVENTIONS  # noqa: F401 (re-exported)
from fusionnet_tf.data.readers import read_stack


def check_convention(convention):
    """Return ``convention`` if known, else raise ValueError naming it."""
    return check_choice("label convention", convention, LABEL_CONVENTIONS)


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


def instance_boundaries(labels, width=1):
    """Membrane target of an instance label image: 0 pixels and lines where ids touch.

    Per section (in-plane only; ids may be 2D or 3D): a pixel is boundary if
    its id is 0, or if it and its right or lower 4-neighbour carry two
    different nonzero ids. Marking one side of each touching pair makes the
    line between two touching cells exactly 1 pixel wide, like a 1-pixel 0
    gap (marking both sides would give 2 pixels there and 1 at gaps). The
    result is then dilated with a ``width`` x ``width`` square, so every
    boundary line is ``width`` pixels wide (and 0 gaps grow by ``width - 1``).

    Args:
        labels: (N, H, W) or (H, W) non-negative integer ids (any integer dtype).
        width: int >= 1, boundary width in pixels.

    Returns:
        uint8 array of the same shape, 1 = boundary (membrane).

    Raises:
        ValueError: non-integer or negative ids, or ``width`` < 1.

    Example:
    >>> instance_boundaries(np.array([[1, 1, 2, 2], [1, 1, 2, 2]]))
    array([[0, 1, 0, 0],
           [0, 1, 0, 0]], dtype=uint8)
    """
    from fusionnet_tf.checks import check_int

    check_int("boundary_width", width)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"instance labels must be non-negative integer ids; received dtype "
                         f"{labels.dtype}" + (f", minimum {labels.min()}" if labels.size
                                               and np.issubdtype(labels.dtype, np.number)
                                               else ""))
    stack = labels[None] if labels.ndim == 2 else labels
    boundary = stack == 0
    for axis in (1, 2):  # y, x: compare each pixel with the next one along the axis
        head = [slice(None)] * 3
        tail = [slice(None)] * 3
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        first, second = stack[tuple(head)], stack[tuple(tail)]
        boundary[tuple(head)] |= (first != second) & (first != 0) & (second != 0)
    if width > 1:
        boundary = ndimage.binary_dilation(boundary, np.ones((1, width, width), bool))
    boundary = boundary.astype(np.uint8)
    return boundary[0] if labels.ndim == 2 else boundary


def to_membrane(labels, convention="isbi", threshold=None, name="labels", boundary_width=1):
    """Convert a label array to the membrane target.

    Args:
        labels: (N, H, W) or (H, W) integer, bool or float array (integer ids
            for ``"instance"``).
        convention: ``"isbi"`` (0 = membrane), ``"membrane"`` (nonzero =
            membrane) or ``"instance"`` (cell ids; ``instance_boundaries``).
        threshold: optional number; if given, values ``> threshold`` count as
            nonzero and any number of distinct values is accepted (binary
            conventions only).
        name: used in error messages (e.g. the file name).
        boundary_width: int >= 1, ``"instance"`` only: boundary width in pixels.

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
    if convention == "instance":
        try:
            return instance_boundaries(labels, boundary_width)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    nonzero = _nonzero_mask(labels, threshold, name)
    membrane = ~nonzero if convention == "isbi" else nonzero
    return membrane.astype(np.uint8)


def read_labels(spec, convention="isbi", threshold=None, boundary_width=1):
    """Read a label stack and convert it to the membrane target.

    Args:
        spec: any spec ``read_stack`` accepts (TIFF stack, image, folder,
            ``file.h5:/key``) or an array. Boolean data (e.g. an HDF5 bool
            mask) counts as 0/1.
        convention: ``"isbi"`` (default; 0 = membrane, 255 = interior) or
            ``"membrane"`` (nonzero = membrane).
        threshold: optional; binarize as ``label > threshold`` instead of
            requiring exactly two values.
        boundary_width: int >= 1; ``"instance"`` labels only, the width of
            the boundaries (``instance_boundaries``).

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
    return to_membrane(labels, convention, threshold, name, boundary_width)
