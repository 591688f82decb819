"""SavedModel runtime: a TensorFlow SavedModel folder run through its ``serving_default``."""

import json
from pathlib import Path

# the JSON model card ``fusionnet export`` writes inside a SavedModel folder
MODEL_CARD_NAME = "model_card.json"


def load(path):
    """A ``SavedModelFunction`` of the SavedModel folder ``path``."""
    return SavedModelFunction(path)


class SavedModelFunction:
    """Callable wrapper around a SavedModel's ``serving_default`` signature.

    Args:
        path: SavedModel directory.

    Call with a (B, H, W, 1) float32 NumPy array; returns (B, H, W, 1) float32.
    A SavedModel whose signature takes a 5D (B, Z, Y, X, 1) input (a 3D
    affinity model from ``fusionnet export``) has ``spatial_dims`` 3 and
    returns (B, Z, Y, X, C); its ``input_multiple`` (z, y, x) is read from the
    ``model_card.json`` the export writes inside the folder (else None).

    Raises:
        ValueError: the SavedModel has no ``serving_default`` signature.
    """

    def __init__(self, path):
        import tensorflow as tf

        self.path = Path(path)
        self._loaded = tf.saved_model.load(str(path))
        if "serving_default" not in self._loaded.signatures:
            raise ValueError(f"SavedModel has no 'serving_default' signature: {path}")
        self._signature = self._loaded.signatures["serving_default"]
        self._input_name = next(iter(self._signature.structured_input_signature[1]))
        spec = self._signature.structured_input_signature[1][self._input_name]
        rank = spec.shape.rank
        self.spatial_dims = 3 if rank == 5 else 2
        self.input_multiple = card_input_multiple(self.path) if rank == 5 else None

    def __call__(self, batch):
        import tensorflow as tf

        outputs = self._signature(**{self._input_name: tf.convert_to_tensor(batch, tf.float32)})
        return next(iter(outputs.values())).numpy()


def card_input_multiple(folder):
    """(z, y, x) ``input_multiple_zyx`` of the model card inside an exported folder, or None."""
    try:
        card = json.loads((Path(folder) / MODEL_CARD_NAME).read_text())
        return tuple(int(m) for m in card["input_multiple_zyx"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
