"""``--slices``: the slice selection shared by ``predict``, ``evaluate``, ``segment`` and ``tune-segment``.

The spec is the one of the training config (``"20-24"``, ``"0,2,5-7"``;
``fusionnet_tf.checks.parse_slices``). Slices outside the stack are refused
with one line naming the flag and the stack's size.
"""


def add_slices_argument(parser, what):
    """Add ``--slices SPEC`` to ``parser``; ``what`` says which stack(s) it selects from."""
    parser.add_argument("--slices", metavar="SPEC", default=None,
                        help=f"Use only these slices of {what}, e.g. 20-24 or 0,2,5-7 "
                             "(0-based, ranges include both ends) (default: all).")


def select_slices(array, spec):
    """``array[index]`` for the ``--slices`` spec (None: ``array`` itself).

    Args:
        array: (N, H, W) array.
        spec: str or None, the ``--slices`` value.

    Returns:
        (len(index), H, W) array.

    Raises:
        ValueError: malformed spec or slices outside the N slices.
    """
    if spec is None:
        return array
    from fusionnet_tf.checks import parse_slices

    return array[parse_slices(spec, len(array), key="--slices")]


def select_matching(labels, other, spec):
    """Select ``--slices`` from ``labels`` and from ``other`` (a map or label image scored against them).

    ``other`` may hold the whole stack (then the same slices are taken) or
    only the selected slices, as ``fusionnet predict --slices`` writes them
    (then it is used as it is).

    Returns:
        ``(labels, other)`` selected; shapes are checked by the caller.
    """
    if spec is None:
        return labels, other
    selected = select_slices(labels, spec)
    if len(other) == len(labels):
        return selected, select_slices(other, spec)
    return selected, other
