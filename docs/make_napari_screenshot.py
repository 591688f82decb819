"""Make docs/napari.png: the napari viewer with an ISBI 2012 slice, its membranes and neurons.

Opens the plugin's sample (File > Open Sample > fusionnet-tf > isbi2012), runs
"Predict membranes" with the shipped model and "Segment neurons" with the
tuned defaults through the dock widgets, and saves napari's own screenshot of
the whole window (``viewer.screenshot(canvas_only=False)``), halved.

    xvfb-run -a python docs/make_napari_screenshot.py     # headless; a desktop needs no xvfb-run

No special settings: the plugin runs TensorFlow in a worker process of its
own, never in the viewer's (the guard below keeps the spawned worker from
running this script again).
"""

import os
import tempfile
import time

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "napari.png")


def wait_for(widget):
    """Let the viewer draw until the widget's worker has finished."""
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)


def main():
    # the widgets' defaults, not the settings they remember from the user's sessions
    os.environ["FUSIONNET_TF_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusionnet-screenshot-")
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("fusionnet-tf", "isbi2012")
    _, predict = viewer.window.add_plugin_dock_widget("fusionnet-tf", "Predict membranes")
    _, segment = viewer.window.add_plugin_dock_widget("fusionnet-tf", "Segment neurons")
    predict.tta.value = 8
    predict()
    wait_for(predict)
    segment.membrane.value = viewer.layers["isbi2012 membranes"]
    segment()
    wait_for(segment)
    viewer.layers["isbi2012 membranes neurons"].opacity = 0.35
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
