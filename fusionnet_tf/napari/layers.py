"""Layer checks and conversions shared by the widgets (NumPy only, no Qt).

Every check raises ``ValueError`` naming the layer and what is wrong with it;
the widgets turn that into a napari notification (``report_errors``), so bad
input never reaches an exception dialog and never adds a layer.
"""

import contextlib

import numpy as np


def layer_array(layer, what):
    """The data of an image or labels ``layer`` as an (H, W) or (N, H, W) NumPy array.

    Args:
        layer: a napari layer (anything with ``name``, ``data``, ``ndim``,
            ``multiscale`` and, for images, ``rgb``), or None.
        what: how error messages call the input (e.g. ``"image"``).

    Returns:
        np.ndarray, 2D or 3D, in the layer's dtype.

    Raises:
        ValueError: no layer, a colour (RGB/RGBA) or multiscale layer, or
            data that is not 2D / 3D, naming the layer.
    """
    if layer is None:
        raise ValueError(f"choose a{'n' if what[0] in 'aeiou' else ''} {what} layer first")
    if getattr(layer, "rgb", False):
        raise ValueError(f"{what} layer '{layer.name}' is a colour (RGB) image; give a grey "
                         "EM image (one channel)")
    if getattr(layer, "multiscale", False):
        raise ValueError(f"{what} layer '{layer.name}' is multiscale; give a single-scale "
                         "layer")
    data = np.asarray(layer.data)
    if data.ndim not in (2, 3) or 0 in data.shape:
        raise ValueError(f"{what} layer '{layer.name}' has shape {data.shape}; expected a 2D "
                         "(H, W) image or an (N, H, W) stack")
    if data.dtype.kind not in "uifb":
        raise ValueError(f"{what} layer '{layer.name}' has dtype {data.dtype}; expected "
                         "integer or float data")
    return data


def as_stack(array):
    """(H, W) -> (1, H, W); (N, H, W) unchanged."""
    return array[np.newaxis] if array.ndim == 2 else array


def add_or_replace(viewer, name, data, kind, like=None, **kwargs):
    """Put ``data`` into the layer ``name``: replace its data if it exists, else add it.

    Args:
        viewer: ``napari.Viewer``.
        name: str. Layer name.
        data: array for the layer.
        kind: ``"image"`` or ``"labels"``.
        like: optional layer whose ``scale`` and ``translate`` the new layer
            takes (so it lies over its input), on its last axes; a leading
            axis it lacks (the channels of affinities) gets scale 1,
            translate 0.
        **kwargs: more ``add_image`` / ``add_labels`` arguments (new layers
            only, except ``metadata``, which a replaced layer takes too).

    Returns:
        The layer.
    """
    ndim = np.ndim(data)
    if like is not None:
        kwargs.setdefault("scale", fit_axes(like.scale, ndim, 1.0))
        kwargs.setdefault("translate", fit_axes(like.translate, ndim, 0.0))
    if name in viewer.layers and _layer_kind(viewer.layers[name]) == kind \
            and viewer.layers[name].ndim == ndim:
        layer = viewer.layers[name]
        layer.data = data
        if "metadata" in kwargs:
            layer.metadata = dict(kwargs["metadata"])
        return layer
    if name in viewer.layers:  # same name, other kind: a new layer gets a unique name
        name = f"{name} ({kind})"
    add = viewer.add_image if kind == "image" else viewer.add_labels
    return add(data, name=name, **kwargs)


def fit_axes(values, ndim, fill):
    """The last ``ndim`` of ``values``, or ``fill`` prepended up to ``ndim`` (a tuple of floats)."""
    values = tuple(float(v) for v in values)
    if len(values) >= ndim:
        return values[len(values) - ndim:]
    return (fill,) * (ndim - len(values)) + values


def _layer_kind(layer):
    from napari.layers import Image, Labels

    return "labels" if isinstance(layer, Labels) else "image" if isinstance(layer, Image) else None


@contextlib.contextmanager
def report_errors(action):
    """Show a user error inside the block as a napari error notification instead of raising.

    Catches ``ValueError``, ``FileNotFoundError``, ``OSError`` and ``ImportError``
    (bad input, missing files, a missing optional package); other exceptions
    are bugs and propagate.

    Args:
        action: str, prefixed to the message (e.g. ``"Predict membranes"``).
    """
    try:
        yield
    except (ValueError, OSError, ImportError) as exc:
        show_error(f"{action}: {exc}")


def show_error(message):
    """A napari error notification (in the viewer's corner, no dialog)."""
    from napari.utils.notifications import show_error as napari_show_error

    napari_show_error(message)
