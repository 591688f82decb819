"""A local Neuroglancer viewer of raw EM, probabilities and a segmentation, and screenshots.

``build_viewer(image, pred=..., seg=..., voxel_size=...)`` serves ``(Z, Y, X)``
array-likes (zarr, h5py, memory-mapped TIFF, ndarray) through the
``neuroglancer`` package's own HTTP server, which bundles the JavaScript client:
nothing is fetched at run time. Chunks are read on demand; 3D meshes of the
selected segments are computed by the server from the segmentation (which reads
the whole segmentation once).

Layers: ``raw`` (image), ``probability`` (image, drawn as a translucent red
overlay; float in [0, 1] or uint8 0-255) and ``segmentation``. Axes are named
``z, y, x`` with the voxel size ``(z, y, x)`` in nm; the 2D panels show x-y
sections.

``take_screenshot(viewer, path)`` drives headless Chromium (Selenium with the
system ``chromium`` and ``chromedriver``) to the viewer and saves what it
renders. WebGL runs in software there: :data:`CHROMIUM_FLAGS` select ANGLE's
SwiftShader backend, which needs no GPU and no display.

neuroglancer and selenium belong to the ``fusionnet-tf[viewer]`` extra and are
imported inside the functions.
"""

import os
import shutil
import socket
import time

import numpy as np

EXTRA_HINT = "install the viewer extra: pip install 'fusionnet-tf[viewer]'"
LAYERS = ("raw", "probability", "segmentation")
# headless Chromium with WebGL in software (no GPU, no X display): ANGLE on SwiftShader
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--hide-scrollbars", "--mute-audio")
# the 3D panel's camera: a quarter turn-ish tilt that shows the sections' stacking (x, y, z, w)
OBLIQUE_VIEW = (-0.29, 0.36, 0.11, 0.88)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# the probability map as a translucent red overlay (toNormalized: uint8 / 255, float as is)
PROBABILITY_SHADER = """\
void main() {
  float p = clamp(toNormalized(getDataValue()), 0.0, 1.0);
  emitRGBA(vec4(1.0, 0.1, 0.1, 0.6 * p));
}
"""


def import_neuroglancer():
    """Import neuroglancer, or raise ImportError naming the ``[viewer]`` extra."""
    try:
        import neuroglancer
    except ModuleNotFoundError as exc:
        raise ImportError(f"fusionnet view needs {exc.name}; {EXTRA_HINT}") from exc
    return neuroglancer


def check_port_free(port, address="127.0.0.1", option="--port"):
    """Raise ValueError unless TCP ``port`` can be bound on ``address`` (0: any free port)."""
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{option} must be a port number 0-65535; received {port}")
    if int(port) == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, int(port)))
        except OSError as exc:
            raise ValueError(f"{option} {port}: cannot listen on {address}:{port} "
                             f"({exc.strerror or exc}); choose another port, or 0 for any "
                             f"free port") from None


def find_browser():
    """``(chromium, chromedriver)`` paths on ``PATH`` (or $FUSIONNET_CHROMIUM), None if absent."""
    chromium = os.environ.get("FUSIONNET_CHROMIUM") or next(
        (path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    return chromium, shutil.which("chromedriver")


class IdVolume:
    """A read-only ``(Z, Y, X)`` view of integer labels as ``uint32``/``uint64`` ids.

    Neuroglancer serves unsigned ids; signed or narrow labels are converted
    block by block as they are read.
    """

    def __init__(self, data, dtype):
        self._data = data
        self.shape = tuple(data.shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, item):
        return np.asarray(self._data[item]).astype(self.dtype, copy=False)

    def transpose(self):
        """The whole volume as an ``(X, Y, Z)`` ndarray (for the server's mesh generator)."""
        return self[:, :, :].transpose()


def coordinate_space(voxel_size_zyx):
    """The Neuroglancer coordinate space of ``(Z, Y, X)`` arrays with voxel size ``(z, y, x)`` nm."""
    neuroglancer = import_neuroglancer()
    return neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm",
                                        scales=[float(v) for v in voxel_size_zyx])


def fitting_scales(shape, voxel_size_zyx, pixels=450):
    """``(cross_section_scale, projection_scale)`` that show the whole volume.

    Neuroglancer's scales are in units of the smallest voxel size: the 2D
    panels' scale is such units per screen pixel (the x-y section fills about
    ``pixels`` pixels), the 3D panel's is the height it shows.
    """
    extent = np.array(shape, float) * np.array(voxel_size_zyx, float) / min(voxel_size_zyx)
    return float(max(extent[1:]) / pixels), float(1.3 * max(extent))


def build_viewer(image, pred=None, seg=None, voxel_size=(1.0, 1.0, 1.0), port=0,
                 address="127.0.0.1", segments=(), layout="xy-3d"):
    """Start a Neuroglancer server and a viewer showing the given volumes.

    Args:
        image: ``(Z, Y, X)`` array-like, the raw EM (layer ``raw``).
        pred: optional array-like of the same shape (layer ``probability``).
        seg: optional integer array-like of the same shape (layer ``segmentation``).
        voxel_size: ``(z, y, x)`` in nm.
        port: TCP port of the server (0: any free port); bound on ``address``.
        segments: ids selected at start (their meshes appear in the 3D panel).
        layout: Neuroglancer layout (``"xy"``, ``"3d"``, ``"xy-3d"``, ``"4panel"``...).

    Returns:
        ``neuroglancer.Viewer``; ``viewer.get_viewer_url()`` is its address.
        The server runs in background threads until the process exits.
    """
    from fusionnet_tf.volumes.precomputed import label_dtype

    neuroglancer = import_neuroglancer()
    neuroglancer.set_server_bind_address(address, int(port))
    dimensions = coordinate_space(voxel_size)
    viewer = neuroglancer.Viewer()
    shape = tuple(image.shape)
    with viewer.txn() as state:
        state.dimensions = dimensions
        state.display_dimensions = ["x", "y", "z"]
        state.position = [s / 2 for s in shape]
        state.cross_section_scale, state.projection_scale = fitting_scales(shape, voxel_size)
        state.projection_orientation = OBLIQUE_VIEW
        state.layout = layout
        state.layers["raw"] = neuroglancer.ImageLayer(
            source=neuroglancer.LocalVolume(image, dimensions=dimensions, volume_type="image"))
        if pred is not None:
            state.layers["probability"] = neuroglancer.ImageLayer(
                source=neuroglancer.LocalVolume(pred, dimensions=dimensions,
                                                volume_type="image"),
                shader=PROBABILITY_SHADER)
        if seg is not None:
            ids = IdVolume(seg, label_dtype(seg.dtype, "--seg"))
            state.layers["segmentation"] = neuroglancer.SegmentationLayer(
                source=neuroglancer.LocalVolume(ids, dimensions=dimensions,
                                                volume_type="segmentation"),
                segments=[int(s) for s in segments])
            state.selected_layer.layer = "segmentation"
    return viewer


def open_browser(url, size=(1024, 768), chromium=None, chromedriver=None):
    """Headless Chromium (Selenium) showing ``url``, with WebGL in software.

    Args:
        url: the viewer's address.
        size: ``(width, height)`` of the window.
        chromium, chromedriver: paths; default :func:`find_browser`.

    Returns:
        a ``selenium.webdriver.Chrome``; call ``.quit()`` when done.

    Raises:
        FileNotFoundError: no Chromium or chromedriver installed.
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError as exc:
        raise ImportError(f"screenshots need {exc.name}; {EXTRA_HINT}") from exc
    found = find_browser()
    chromium, chromedriver = chromium or found[0], chromedriver or found[1]
    if not chromium or not chromedriver:
        raise FileNotFoundError("screenshots need Chromium and its driver; on Debian/Ubuntu: "
                                "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + (f"--window-size={size[0]},{size[1]}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.get(url)
    return driver


def browser_state(driver, timeout=60.0):
    """The viewer state (a dict) as the page's Neuroglancer client holds it.

    Waits up to ``timeout`` seconds for the client to start.
    """
    deadline = time.monotonic() + timeout
    while True:
        state = driver.execute_script(
            "return window.viewer ? JSON.stringify(window.viewer.state.toJSON()) : null;")
        if state is not None:
            import json

            return json.loads(state)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Neuroglancer client did not start within {timeout} s")
        time.sleep(0.2)


def screenshot_image(viewer, size=(1024, 768), timeout=120.0):
    """Render the viewer's panels (without controls) in the connected browser.

    Args:
        viewer: a ``neuroglancer.Viewer`` with a browser connected.
        size: ``(width, height)`` in pixels.
        timeout: seconds to wait for the picture.

    Returns:
        ``(H, W, 4)`` uint8 RGBA array. The client waits for the visible data
        (chunks, meshes) to load before it captures.

    Raises:
        TimeoutError: no picture within ``timeout`` seconds.
    """
    import io
    import threading

    from PIL import Image

    with viewer.config_state.txn() as config:
        config.show_ui_controls = False
        config.show_panel_borders = False
        config.viewer_size = list(size)
    replies = []
    done = threading.Event()
    for _ in range(5):  # the first picture may come before the canvas took the new size
        done.clear()
        viewer.async_screenshot(lambda reply: (replies.append(reply), done.set()))
        if not done.wait(timeout):
            raise TimeoutError(f"the browser sent no screenshot within {timeout:g} s")
        shot = replies[-1].screenshot
        if (shot.width, shot.height) == tuple(size):
            break
    return np.asarray(Image.open(io.BytesIO(shot.image)).convert("RGBA"))


def take_screenshot(viewer, path, size=(1024, 768)):
    """Open headless Chromium on ``viewer``, render, and write a PNG to ``path`` (atomically)."""
    from PIL import Image

    from fusionnet_tf.io.outputs import atomic_path

    driver = open_browser(viewer.get_viewer_url(), size)
    try:
        browser_state(driver)
        pixels = screenshot_image(viewer, size)
    finally:
        driver.quit()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return pixels
