"""``python -m fusionnet_tf.napari [FILES]``: napari with the "Predict membranes" widget open.

A plain launcher, the same as ``napari [FILES]`` then Plugins > fusionnet-tf >
Predict membranes: the plugin needs no special start-up, since TensorFlow runs
in a worker process of its own (``engine``), never in the viewer's.
"""

import sys


def main(argv=None):
    """Open napari (with ``argv`` files) and the "Predict membranes" widget; returns 0."""
    import napari

    viewer = napari.Viewer()
    for path in (sys.argv[1:] if argv is None else argv):
        viewer.open(path)
    viewer.window.add_plugin_dock_widget("fusionnet-tf", "Predict membranes")
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
