"""Intensity normalization of EM stacks to float32 [0, 1].

Three modes, one signature:

- ``"slice"`` (default everywhere): min-max per slice. EM sections are imaged
  one by one and their histograms drift (ISBI 2012 slices 15-29 span 0-255,
  slices 0-14 a narrower range), so each slice is stretched on its own.
- ``"global"``: one min-max over the whole stack.
- ``"dtype"``: the full range of the integer dtype (0-255 for uint8, 0-65535 for
  uint16); float input is assumed to be in [0, 1] already.

``intensity_range`` computes the (lo, hi) pair per slice; ``normalize`` applies
it, or a (lo, hi) you pass, so a block cut from a slice can be normalized exactly
like the whole slice.
"""

import numpy as np

from fusionnet_tf.checks import check_choice
from fusionnet_tf.choices import NORMALIZATION_MODES  # noqa: F401 (re-exported)


def check_mode(mode):
    """Return ``mode`` if it is a known normalization mode, else raise ValueError."""
    return check_choice("normalization mode", mode, NORMALIZATION_MODES)


def check_finite(stack, name="`stack`"):
    """Raise a one-line ValueError if ``stack`` holds NaN or infinite values.

    Args:
        stack: (N, H, W) or (H, W) array of any real dtype; integer arrays
            cannot hold NaN/inf and are not scanned.
        name: str naming the array in the message (an argument or a file).

    Returns:
        ``stack`` unchanged.

    Raises:
        ValueError: naming ``name``, how many values are not finite and where
            the first one is.

    Example:
    >>> check_finite(np.array([[0.5, np.nan]], np.float32), "INPUT a.tif")
    Traceback (most recent call last):
    ValueError: INPUT a.tif contains 1 NaN or infinite value(s), the first at index (0, 1); ...
    """
    array = np.asarray(stack)
    if array.dtype.kind not in "fc":
        return stack
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or infinite value(s), the first "
                         f"at index {first}; replace them (e.g. numpy.nan_to_num) before "
                         "normalizing or predicting")
    return stack


def _dtype_range(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(max(info.min, 0)), float(info.max)
    return 0.0, 1.0


def intensity_range(stack, mode="slice"):
    """Per-slice intensity range used for normalization.

    Args:
        stack: (N, H, W) array or lazy array-like (read one slice at a time),
            or a 2D (H, W) image (treated as one slice). Any real dtype.
        mode: ``"slice"``, ``"global"`` or ``"dtype"``.

    Returns:
        ``(lo, hi)``: two float32 arrays of shape (N,).

    Raises:
        ValueError: unknown ``mode`` or an array that is not 2D/3D.

    Example:
    >>> lo, hi = intensity_range(stack)          # per-slice min and max
    >>> block = normalize(stack[:, :256, :256], lo=lo, hi=hi)
    """
    check_mode(mode)
    shape = tuple(stack.shape)
    if len(shape) == 2:
        stack = np.asarray(stack)[np.newaxis]
        shape = stack.shape
    if len(shape) != 3:
        raise ValueError(f"stack must be (N, H, W) or (H, W); received shape {shape}")
    n = shape[0]
    if mode == "dtype":
        lo, hi = _dtype_range(stack.dtype)
        return np.full(n, lo, np.float32), np.full(n, hi, np.float32)
    lo = np.empty(n, np.float64)
    hi = np.empty(n, np.float64)
    for i in range(n):  # slice by slice: works for lazy (h5py, memmap) stacks too
        plane = np.asarray(stack[i])
        lo[i], hi[i] = plane.min(), plane.max()
    if mode == "global":
        lo[:], hi[:] = lo.min(), hi.max()
    return lo.astype(np.float32), hi.astype(np.float32)


def _per_slice(value, n, name):
    value = np.asarray(value, np.float32)
    if value.ndim == 0:
        return np.full(n, value, np.float32)
    if value.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},); received shape {value.shape}")
    return value


def normalize(stack, mode="slice", lo=None, hi=None):
    """Map a stack to float32 [0, 1]: ``clip((x - lo) / (hi - lo), 0, 1)`` per slice.

    Slices with ``hi == lo`` (constant) become all zeros.

    Args:
        stack: (N, H, W) or (H, W) array, any real dtype (uint8, uint16, float).
        mode: ``"slice"`` (default), ``"global"`` or ``"dtype"``; how to
            compute the range when ``lo``/``hi`` are not given.
        lo: optional scalar or (N,) array of per-slice lower bounds.
        hi: optional scalar or (N,) array of per-slice upper bounds. Pass both
            to normalize a block exactly as its whole slice would be.

    Returns:
        float32 array of the input's shape with values in [0, 1].

    Raises:
        ValueError: bad ``mode``, bad array rank, NaN or infinite values, or
            ``lo``/``hi`` of the wrong shape.

    Example:
    >>> x = normalize(read_stack("train-volume.tif"))  # (N, H, W) float32
    """
    array = np.asarray(stack)
    squeeze = array.ndim == 2
    if squeeze:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"stack must be (N, H, W) or (H, W); received shape {array.shape}")
    check_finite(array)  # NaN would turn a whole slice into zeros, inf into NaN
    n = array.shape[0]
    if lo is None or hi is None:
        range_lo, range_hi = intensity_range(array, mode)
        lo = range_lo if lo is None else lo
        hi = range_hi if hi is None else hi
    lo = _per_slice(lo, n, "lo")[:, None, None]
    hi = _per_slice(hi, n, "hi")[:, None, None]
    scale = hi - lo
    safe = np.where(scale > 0, scale, np.float32(1))
    out = (array.astype(np.float32) - lo) / safe
    out = np.where(scale > 0, out, np.float32(0))
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    return out[0] if squeeze else out
