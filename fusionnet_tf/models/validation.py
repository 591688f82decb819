"""Argument checks shared by the model builders.

Each check raises ``ValueError`` naming the argument and the value received.
"""

from fusionnet_tf.checks import check_choice, check_int

OUTPUT_ACTIVATIONS = ("sigmoid", "softmax", None)


def _describe(name, value):
    return f"{name}={value!r} (of type {type(value).__name__})"


def check_positive_int(name, value, minimum=1):
    """Raise ValueError unless ``value`` is an integer >= ``minimum`` (see ``fusionnet_tf.checks``)."""
    check_int(name, value, minimum)


def check_input_shape(input_shape, depth):
    """Validate ``(H, W, C)``: H, W None or divisible by ``2**depth``.

    Returns:
        The shape as a tuple.
    """
    return check_input_sides(input_shape, 2**depth, f"2**depth={2**depth} (depth={depth})")


def check_input_sides(input_shape, multiple, reason):
    """Validate ``(H, W, C)``: H, W None or multiples of ``multiple``.

    Args:
        input_shape: the builder's ``input_shape`` argument.
        multiple: int. Required multiple of H and W.
        reason: str. Shown in the error, e.g. ``"2**depth=16 (depth=4)"``.

    Returns:
        The shape as a tuple.
    """
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be a tuple (H, W, channels); received "
            + _describe("input_shape", input_shape)
        )
    for axis, size in zip(("H", "W"), input_shape[:2]):
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(
                f"`input_shape` {axis} must be a positive integer or None; "
                f"received input_shape={tuple(input_shape)!r}"
            )
        if size % multiple:
            raise ValueError(
                f"`input_shape` {axis}={size} is not divisible by {reason}; "
                f"received input_shape={tuple(input_shape)!r}. "
                f"Pad or crop to a multiple of {multiple}."
            )
    check_positive_int("input_shape channels", input_shape[2])
    return tuple(input_shape)


def check_head(num_classes, output_activation):
    """Validate ``num_classes`` and ``output_activation``."""
    check_positive_int("num_classes", num_classes)
    check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    if output_activation == "softmax" and num_classes < 2:
        raise ValueError(
            "`output_activation='softmax'` needs num_classes >= 2; received "
            f"num_classes={num_classes}. Use 'sigmoid' for one membrane channel."
        )


def check_dropout(dropout):
    """Validate a dropout rate in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(
            "`dropout` must be a float in [0, 1); received " + _describe("dropout", dropout)
        )
