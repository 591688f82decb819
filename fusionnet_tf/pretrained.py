"""The reference FusionNet trained on ISBI 2012, shipped inside the package.

See MODEL_CARD.md for the data, split, config, training time and scores.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED_FILE = WEIGHTS_DIR / "fusionnet_isbi2012.keras"


def pretrained_path():
    """Path of the shipped ``.keras`` file; FileNotFoundError if it is missing."""
    if not PRETRAINED_FILE.is_file():
        raise FileNotFoundError(
            f"the pretrained model is missing from the installed package: {PRETRAINED_FILE}; "
            "reinstall fusionnet-tf or pass --model PATH"
        )
    return PRETRAINED_FILE


def load_pretrained():
    """Load the shipped ISBI 2012 FusionNet as a float32 ``keras.Model``.

    Returns:
        ``keras.Model`` mapping (batch, H, W, 1) float32 images in [0, 1]
        (per-slice min-max normalized) to (batch, H, W, 1) float32 membrane
        probabilities; H and W must be multiples of 16.

    Example:
    >>> model = fusionnet_tf.load_pretrained()
    """
    import keras

    return keras.saving.load_model(pretrained_path(), compile=False)


EXAMPLE_FILE = Path(__file__).resolve().parent / "examples" / "isbi2012_test_slices_0-2.tif"


def example_path():
    """Path of the shipped example stack: 3 x 512 x 512 uint8 ISBI 2012 test slices."""
    return EXAMPLE_FILE
