"""Argument checks shared across the package (pure Python, cheap to import).

Each check raises ``ValueError`` naming the argument and the value received.
"""

import numbers
import re


def check_int(name, value, minimum=1):
    """Return ``value`` as an ``int`` if it is an integer >= ``minimum``.

    Args:
        name: str. The argument's name, shown in the error.
        value: the value received. Python and NumPy integers pass; ``bool``,
            floats (even ``2.0``) and strings do not.
        minimum: int. Smallest allowed value. Defaults to 1.

    Returns:
        int.

    Raises:
        ValueError: ``value`` is not an integer or is below ``minimum``.

    Example:
    >>> check_int("batch_size", 4)
    4
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}; received {name}={value!r} "
            f"(of type {type(value).__name__})"
        )
    return int(value)


def _label(name):
    """How an error names ``name``: ```tta``` for a parameter; a command-line flag
    (``--format``) or a phrase (``config key 'loss.name'``) as it is."""
    return name if name.startswith("-") or " " in name else f"`{name}`"


def _received(name, value):
    """``tta=3`` for a parameter, ``'tflite'`` for a flag or phrase."""
    return repr(value) if name.startswith("-") or " " in name else f"{name}={value!r}"


def check_choice(name, value, choices, where=""):
    """Return ``value`` if it is one of ``choices``.

    Args:
        name: str. The argument's name, shown in the error: a parameter
            (``"tta"``, shown as ```tta```), a command-line flag (``"--format"``)
            or a phrase with a space (``"config key 'loss.name'"``), both shown
            as they are.
        value: the value received. ``bool`` only matches ``bool`` choices
            (``True`` is not ``1``); an unhashable value matches nothing.
        choices: the allowed values, in the order the error lists them (a
            dict: its keys).
        where: str. Appended to the list of choices, e.g. ``"for a 3D model"``.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: one line naming the argument, the choices and the value.

    Example:
    >>> check_choice("blending", "cosine", ("gaussian", "cosine", "constant"))
    'cosine'
    >>> check_choice("--format", "tflite", ("onnx", "litert"))
    Traceback (most recent call last):
    ...
    ValueError: --format must be one of onnx, litert; received 'tflite'
    """
    choices = list(choices)
    try:
        known = value in choices
    except TypeError:  # unhashable, e.g. a list against dict keys
        known = False
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        known = False
    if not known:
        kind = ""
        if not any(type(value) is type(c) for c in choices):
            kind = f" (of type {type(value).__name__})"
        listed = ", ".join(str(c) for c in choices) + (f" {where}" if where else "")
        raise ValueError(f"{_label(name)} must be one of {listed}; received "
                         f"{_received(name, value)}{kind}")
    return value


def check_range(name, value, low=None, high=None, open_low=False, open_high=False):
    """Return ``value`` if it is a real number within ``[low, high]``.

    Args:
        name: str. The argument's name, shown as in ``check_choice``.
        value: the value received. Python and NumPy integers and floats pass;
            ``bool``, strings and NaN do not.
        low, high: numbers or None (no bound on that side).
        open_low, open_high: bool. Exclude the bound itself: ``(low, ...``
            or ``..., high)``. Default False (bounds included).

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: one line naming the argument, the interval and the value.

    Example:
    >>> check_range("merge_threshold", 0.5, 0, 1)
    0.5
    >>> check_range("z_link_overlap", 0, 0, 1, open_low=True)
    Traceback (most recent call last):
    ...
    ValueError: `z_link_overlap` must be a number in (0, 1]; received z_link_overlap=0
    """
    interval = ("(" if open_low or low is None else "[") + ("-inf" if low is None else f"{low}")
    interval += ", " + ("inf" if high is None else f"{high}")
    interval += ")" if open_high or high is None else "]"
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    inside = number and (low is None or (value > low if open_low else value >= low)) and (
        high is None or (value < high if open_high else value <= high))  # NaN: never inside
    if not inside:
        kind = "" if number else f" (of type {type(value).__name__})"
        raise ValueError(f"{_label(name)} must be a number in {interval}; received "
                         f"{_received(name, value)}{kind}")
    return value


def parse_slices(spec, num_slices, key="slices"):
    """Turn a slice spec into a sorted list of slice indices.

    Args:
        spec: None (all slices), an int, a list of ints, or a string such as
            ``"0-19"``, ``"3"`` or ``"0,2,5-7"`` (ranges include both ends).
        num_slices: int. Number of slices in the stack, for bounds checks.
        key: str. Named in error messages: a config key (``"data.train_slices"``,
            shown as ``config key 'data.train_slices'``) or a command-line flag
            (``"--slices"``, shown as it is).

    Returns:
        list of int in ``[0, num_slices)``.

    Raises:
        ValueError: malformed spec, empty selection or index out of range.

    Example:
    >>> parse_slices("0-2,5", 10)
    [0, 1, 2, 5]
    """
    name = key if key.startswith("-") else f"config key '{key}'"
    if spec is None:
        return list(range(num_slices))
    if isinstance(spec, int) and not isinstance(spec, bool):
        indices = [spec]
    elif isinstance(spec, (list, tuple)):
        indices = list(spec)
    elif isinstance(spec, str):
        indices = []
        for part in spec.replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match:
                raise ValueError(
                    f"{name} must look like '0-19' or '0,2,5-7'; received {spec!r}"
                )
            start = int(match.group(1))
            stop = int(match.group(2)) if match.group(2) is not None else start
            if stop < start:
                raise ValueError(f"{name} has a decreasing range; received {spec!r}")
            indices.extend(range(start, stop + 1))
    else:
        raise ValueError(f"{name} must be a string or a list of ints; received {spec!r}")
    if not indices:
        raise ValueError(f"{name} selects no slices; received {spec!r}")
    bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < num_slices]
    if bad:
        raise ValueError(
            f"{name} selects slice(s) {bad} outside the stack's "
            f"{num_slices} slices; received {spec!r}"
        )
    return sorted(set(indices))
