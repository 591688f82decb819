"""``python -m fusionnet_tf.napari [FILES]``: napari with the plugin, safe on Mesa OpenGL.

TensorFlow is imported before napari makes its OpenGL context, and Mesa uses
its softpipe rasterizer without LLVM vertex shaders: TensorFlow's bundled
LLVM clashes with Mesa's libLLVM otherwise (a crash when TensorFlow loads or
when the canvas draws). The process ends with ``os._exit`` once the window
closes, skipping LLVM's static destructors, which abort in that combination.
"""

import os
import sys


def main(argv=None):
    """Open napari (with ``argv`` files) and the "Predict membranes" widget; returns 0."""
    os.environ.setdefault("GALLIUM_DRIVER", "softpipe")
    os.environ.setdefault("DRAW_USE_LLVM", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # noqa: F401 (TensorFlow before any OpenGL context)
    import napari

    viewer = napari.Viewer()
    for path in (sys.argv[1:] if argv is None else argv):
        viewer.open(path)
    viewer.window.add_plugin_dock_widget("fusionnet-tf", "Predict membranes")
    napari.run()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
