"""Make docs/napari.png: the napari viewer with an ISBI 2012 slice, its membranes and neurons.

Opens the plugin's sample (File > Open Sample > fusionnet-tf > isbi2012), runs
"Predict membranes" with the shipped model and "Segment neurons" with the
tuned defaults through the dock widgets, and saves napari's own screenshot of
the whole window (``viewer.screenshot(canvas_only=False)``), halved.

    xvfb-run -a python docs/make_napari_screenshot.py     # headless; a desktop needs no xvfb-run
"""

import os
import sys
import time

# TensorFlow first, and Mesa's softpipe rasterizer without LLVM: TensorFlow's
# LLVM symbols clash with llvmpipe's (see tests/test_napari_plugin.py).
os.environ.setdefault("GALLIUM_DRIVER", "softpipe")
os.environ.setdefault("DRAW_USE_LLVM", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402,F401

import napari  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "napari.png")


def main():
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("fusionnet-tf", "isbi2012")
    _, predict = viewer.window.add_plugin_dock_widget("fusionnet-tf", "Predict membranes")
    _, segment = viewer.window.add_plugin_dock_widget("fusionnet-tf", "Segment neurons")
    predict.tta.value = 8
    predict()
    while predict.worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)
    segment.membrane.value = viewer.layers["isbi2012 membranes"]
    labels = segment()
    labels.opacity = 0.35
    viewer.layers["isbi2012 membranes"].opacity = 0.8
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(np.asarray(shot)[..., :3])
    image = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
    image.quantize(colors=128).save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT}: {image.width}x{image.height}, {os.path.getsize(OUTPUT) // 1024} KB")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip LLVM's static destructors, which abort after TensorFlow + Mesa
