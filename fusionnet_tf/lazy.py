"""Lazy public names for package ``__init__`` files.

Submodules that import TensorFlow load only when one of their names is first
used, so ``import fusionnet_tf`` and ``fusionnet --help`` stay fast.
"""

import importlib
import sys


def lazy_attributes(package, names):
    """Return ``(__getattr__, __dir__)`` for ``package`` resolving ``names`` lazily.

    Args:
        package: str. The package's ``__name__``.
        names: dict mapping a public name to the module that defines it.

    Returns:
        Two functions to assign to the package's ``__getattr__`` and ``__dir__``.

    Example:
    >>> __getattr__, __dir__ = lazy_attributes(__name__, {"train": "pkg.run"})
    """

    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
