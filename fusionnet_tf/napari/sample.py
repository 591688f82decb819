"""Sample data "isbi2012": the shipped ISBI 2012 test slices (File > Open Sample)."""


def isbi2012_sample():
    """The shipped example stack as napari layer data.

    Returns:
        ``[(data, metadata, "image")]``: (3, 512, 512) uint8 ISBI 2012 test
        slices 0-2 (``fusionnet_tf.pretrained.example_path``).
    """
    from fusionnet_tf.data import read_stack
    from fusionnet_tf.pretrained import example_path

    data = read_stack(example_path())
    return [(data, {"name": "isbi2012", "colormap": "gray"}, "image")]
