"""Keras runs on TensorFlow in this package, whatever ``KERAS_BACKEND`` says.

fusionnet-tf is TensorFlow-only (``tf.data``, SavedModel, TF Serving), but
Keras 3 users often set ``KERAS_BACKEND=torch`` or ``jax`` for other work, and
``bioimageio.core`` sets it on import. ``import fusionnet_tf`` calls
:func:`use_tensorflow_backend` before anything imports Keras:

- ``KERAS_BACKEND`` unset or ``tensorflow``: nothing to do;
- another value: it is set to ``tensorflow`` for this process (and the
  processes it starts), with one warning line on stderr;
- Keras already imported with another backend: ``ImportError`` with a one-line
  message (a backend cannot change once Keras is loaded).
"""

import os
import sys

BACKEND = "tensorflow"


def use_tensorflow_backend():
    """Make Keras use TensorFlow in this process (see the module docstring).

    Returns:
        str or None: the overridden ``KERAS_BACKEND`` value, or None if
        there was nothing to override.

    Raises:
        ImportError: Keras was already imported with another backend.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        loaded = _loaded_backend(keras)
        if loaded not in (None, BACKEND):
            raise ImportError(
                f"fusionnet_tf needs Keras on TensorFlow, but Keras was already imported with the "
                f"{loaded!r} backend in this process; set KERAS_BACKEND=tensorflow (or import "
                f"fusionnet_tf before keras)")
    requested = os.environ.get("KERAS_BACKEND")
    if requested in (None, "", BACKEND):
        os.environ["KERAS_BACKEND"] = BACKEND
        return None
    os.environ["KERAS_BACKEND"] = BACKEND
    if keras is None:
        print(f"fusionnet-tf: warning: KERAS_BACKEND={requested} overridden: this package runs "
              f"Keras on TensorFlow", file=sys.stderr)
    return requested


def _loaded_backend(keras):
    """The backend an imported Keras runs on, or None if it cannot tell."""
    try:
        return keras.backend.backend()
    except AttributeError:
        return None
