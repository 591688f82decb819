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
