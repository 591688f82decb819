"""ISBI 2012 EM segmentation challenge data (Drosophila VNC, ssTEM).

Arganda-Carreras et al. (2015), Crowdsourcing the creation of image
segmentation algorithms for connectomics, Front. Neuroanat. 9:142.
Cardona et al. (2010), PLoS Biol. 8(10): e1000502.

The release has three multi-page TIFFs: ``train-volume.tif`` (30 x 512 x 512
uint8), ``train-labels.tif`` (same shape; "in-out" labels, 255 = cell
interior, 0 = membrane) and ``test-volume.tif`` (30 slices, no labels).
Download it from the challenge page; this module only finds and loads it:

    get_isbi2012_paths(root) -> isbi2012_datasets(root, ...)
"""

from pathlib import Path

ISBI2012_FILES = {
    "train_images": "train-volume.tif",
    "train_labels": "train-labels.tif",
    "test_images": "test-volume.tif",
}
ISBI2012_REQUIRED = ("train_images", "train_labels")


def get_isbi2012_paths(root):
    """Paths of the ISBI 2012 files in ``root``.

    Args:
        root: folder holding ``train-volume.tif``, ``train-labels.tif`` and
            (optionally) ``test-volume.tif``.

    Returns:
        dict with keys ``"train_images"``, ``"train_labels"``, ``"test_images"``
        mapping to ``Path`` objects (``test_images`` may not exist).

    Raises:
        FileNotFoundError: if ``root`` or one of the two training files is missing.

    Example:
    >>> paths = get_isbi2012_paths("data/isbi2012")
    >>> x = read_stack(paths["train_images"])
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ISBI 2012 folder does not exist: {root}")
    paths = {key: root / name for key, name in ISBI2012_FILES.items()}
    missing = [str(paths[key]) for key in ISBI2012_REQUIRED if not paths[key].is_file()]
    if missing:
        raise FileNotFoundError(f"ISBI 2012 file(s) missing: {', '.join(missing)}")
    return paths


def _check_slices(name, slices, count):
    slices = [int(i) for i in slices]
    if not slices:
        raise ValueError(f"{name} must list at least one slice index; received {slices}")
    bad = [i for i in slices if not 0 <= i < count]
    if bad:
        raise ValueError(f"{name}: slice indices {bad} out of range for a stack of {count} slices")
    return slices


def load_isbi2012(root, slices=None, normalization="slice"):
    """Training images (normalized float32) and membrane labels (uint8) of ISBI 2012.

    Args:
        root: the ISBI 2012 folder.
        slices: optional list of slice indices; all slices by default.
        normalization: as ``normalize``; defaults to ``"slice"``.

    Returns:
        ``(images, labels)``: float32 (N, 512, 512) in [0, 1] and uint8
        (N, 512, 512) in {0, 1}, 1 = membrane (label == 0 in the files).
    """
    import numpy as np

    from fusionnet_tf.data.labels import read_labels
    from fusionnet_tf.data.normalize import normalize
    from fusionnet_tf.data.readers import read_stack

    paths = get_isbi2012_paths(root)
    images = normalize(read_stack(paths["train_images"]), normalization)
    labels = read_labels(paths["train_labels"], convention="isbi")
    if slices is not None:
        index = np.array(_check_slices("slices", slices, len(images)))
        images, labels = images[index], labels[index]
    return images, labels


def isbi2012_datasets(root, train_slices=range(0, 20), val_slices=range(20, 25), tile_size=512,
                      batch_size=4, augment=None, seed=0, normalization="slice"):
    """Training and validation ``tf.data`` pipelines for ISBI 2012.

    Args:
        root: the ISBI 2012 folder.
        train_slices: slice indices for training. Defaults to 0-19.
        val_slices: slice indices for validation. Defaults to 20-24.
        tile_size: int. Defaults to 512.
        batch_size: int. Defaults to 4.
        augment: as ``train_dataset`` (None = default augmentation).
        seed: int. Defaults to 0.
        normalization: defaults to ``"slice"``.

    Returns:
        ``(train, val)``: ``train_dataset(...)`` and ``validation_dataset(...)``.

    Raises:
        FileNotFoundError: missing files. ValueError: bad slice indices.

    Example:
    >>> train, val = isbi2012_datasets("data/isbi2012", tile_size=256, batch_size=8)
    """
    from fusionnet_tf.data.pipeline import train_dataset, validation_dataset

    images, labels = load_isbi2012(root, normalization=normalization)
    train = _check_slices("train_slices", train_slices, len(images))
    val = _check_slices("val_slices", val_slices, len(images))
    # images are normalized already: the pipelines must not stretch them again
    return (train_dataset(images[train], labels[train], tile_size, batch_size, augment=augment,
                          seed=seed, normalization=None),
            validation_dataset(images[val], labels[val], tile_size, batch_size, normalization=None))
