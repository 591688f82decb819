"""Argument checks shared across the package (pure Python, cheap to import).

Each check raises ``ValueError`` naming the argument and the value received.
"""

import numbers


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
