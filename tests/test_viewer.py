"""fusionnet view: a local Neuroglancer driven by headless Chromium (WebGL in software).

The browser tests need Debian's ``chromium`` and ``chromium-driver``. They are
skipped when those are missing, unless FUSIONNET_REQUIRE_BROWSER is set (CI sets
it, so a broken install fails there instead of being skipped).
"""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("neuroglancer")

from fusionnet_tf.cli import main  # noqa: E402
from fusionnet_tf.volumes import viewer as viewer_lib  # noqa: E402

SHAPE = (6, 64, 96)
VOXEL_ZYX = (30.0, 6.0, 6.0)
LEFT, RIGHT = 5, 9  # segment ids: LEFT fills x < 48, RIGHT x >= 48 (rows 8..56)


def browser_available():
    chromium, driver = viewer_lib.find_browser()
    return bool(chromium and driver)


needs_browser = pytest.mark.skipif(
    not browser_available() and not os.environ.get("FUSIONNET_REQUIRE_BROWSER"),
    reason="Chromium and chromedriver not installed (apt-get install chromium chromium-driver); "
           "set FUSIONNET_REQUIRE_BROWSER=1 to fail instead")


def synthetic():
    image = np.full(SHAPE, 128, np.uint8)  # flat grey: any colour comes from the segmentation
    seg = np.zeros(SHAPE, np.uint32)
    seg[:, 8:56, :48] = LEFT
    seg[:, 8:56, 48:] = RIGHT
    pred = np.zeros(SHAPE, np.float32)
    return image, pred, seg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    image, pred, seg = synthetic()
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "pred.tif", pred)
    tifffile.imwrite(folder / "seg.tif", seg)
    tifffile.imwrite(folder / "float_seg.tif", seg.astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def session():
    """A viewer of the synthetic volume (xy panel filling the picture) and a browser on it."""
    image, pred, seg = synthetic()
    viewer = viewer_lib.build_viewer(image, pred, seg, VOXEL_ZYX, layout="xy")
    with viewer.txn() as state:
        state.cross_section_scale = 96 / 200  # voxels per pixel: the 96-voxel width on 200 px
    driver = viewer_lib.open_browser(viewer.get_viewer_url(), size=(400, 300))
    yield viewer, driver
    driver.quit()


def coloured(pixels):
    """Mask of pixels that are not grey (a segmentation colour drawn over the grey image)."""
    rgb = pixels[..., :3].astype(int)
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > 25


def select(viewer, driver, ids):
    with viewer.txn() as state:
        state.layers["segmentation"].segments = set(ids)
    for _ in range(100):
        layers = {layer["name"]: layer for layer in viewer_lib.browser_state(driver)["layers"]}
        if sorted(map(int, layers["segmentation"].get("segments", []))) == sorted(ids):
            return
        import time

        time.sleep(0.1)
    raise AssertionError(f"the browser never showed segments {ids}")


@needs_browser
def test_browser_state_has_the_three_layers_at_the_voxel_size(session):
    _, driver = session
    state = viewer_lib.browser_state(driver)
    assert [layer["name"] for layer in state["layers"]] == ["raw", "probability", "segmentation"]
    assert [layer["type"] for layer in state["layers"]] == ["image", "image", "segmentation"]
    dims = state["dimensions"]
    assert {axis: dims[axis][0] for axis in "zyx"} == pytest.approx(
        {"z": 30e-9, "y": 6e-9, "x": 6e-9})
    assert [dims[axis][1] for axis in "zyx"] == ["m", "m", "m"]


@needs_browser
def test_a_segment_selected_by_id_is_drawn_where_its_voxels_are(session):
    viewer, driver = session
    centres = {}
    for label in (LEFT, RIGHT):
        select(viewer, driver, [label])
        pixels = viewer_lib.screenshot_image(viewer, size=(400, 300))
        mask = coloured(pixels)
        assert pixels.std() > 0 and mask.sum() > 500, label  # not blank: the segment's colour
        rows, cols = np.nonzero(mask)
        centres[label] = cols.mean()
        # the coloured band spans 48 of 64 rows: it is narrower than it is wide
        assert np.ptp(rows) < np.ptp(cols) * 2, label
    assert centres[LEFT] < 200 < centres[RIGHT]  # LEFT's voxels are at small x, RIGHT's at large


@needs_browser
def test_view_cli_screenshot_shows_the_segmentation(files, tmp_path, capsys):
    out = tmp_path / "shot.png"
    code = main(["view", str(files / "image.tif"), "--pred", str(files / "pred.tif"), "--seg",
                 str(files / "seg.tif"), "--voxel-size", "30,6,6", "--layout", "xy",
                 "--screenshot", str(out), "--size", "320,240"])
    assert code == 0, capsys.readouterr().err
    from PIL import Image

    pixels = np.asarray(Image.open(out).convert("RGBA"))
    assert pixels.shape == (240, 320, 4)
    assert coloured(pixels).sum() > 200  # both segments drawn in their colours


def test_port_in_use_is_one_line_exit_2(files, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["view", str(files / "image.tif"), "--port", str(port)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fusionnet view: error: --port {port}: cannot listen on")


@pytest.mark.parametrize("argv, message", [
    (["--seg", "float_seg.tif"], "dtype float32; a segmentation must hold integer ids"),
    (["--voxel-size", "30,6"], "--voxel-size must be 3 positive numbers"),
    (["--seg", "missing.tif"], "--seg"),
    (["--segments", "4,x"], "--segments must be"),
])
def test_bad_input_is_one_line_exit_2(files, capsys, argv, message):
    argv = [str(files / a) if a.endswith(".tif") else a for a in argv]
    assert main(["view", str(files / "image.tif")] + argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fusionnet view: error: ") and message in line


def test_voxel_size_defaults_to_the_ome_zarr_metadata(files, tmp_path, monkeypatch, capsys):
    """Without --voxel-size the viewer takes IMAGE's OME-Zarr voxel size (the --seg's when
    IMAGE has none); the real viewer state is checked, the browser is left out."""
    pytest.importorskip("ome_zarr")
    from fusionnet_tf.io import ome_zarr

    image, _, seg = synthetic()
    em = tmp_path / "em.ome.zarr"
    ome_zarr.write_ome_zarr(em, image, ome_zarr.OutputPlan("image", "0.4", (40.0, 8.0, 4.0),
                                                           levels=1))
    ome_zarr.write_ome_zarr(em / "labels" / "cells", seg,
                            ome_zarr.OutputPlan("labels", "0.4", (40.0, 8.0, 4.0), levels=1))
    seen = {}

    def fake_screenshot(viewer, path, size):
        with viewer.txn() as state:
            seen["scales"] = [state.dimensions[axis].scale for axis in ("x", "y", "z")]
            seen["units"] = [state.dimensions[axis].unit for axis in ("x", "y", "z")]
        Path(path).write_bytes(b"")

    monkeypatch.setattr(viewer_lib, "take_screenshot", fake_screenshot)
    cases = [([str(em)], [4e-9, 8e-9, 40e-9]),
             ([str(files / "image.tif"), "--seg", str(em / "labels" / "cells")],
              [4e-9, 8e-9, 40e-9]),
             ([str(em), "--voxel-size", "30,6,6"], [6e-9, 6e-9, 30e-9]),
             ([str(files / "image.tif")], [1e-9, 1e-9, 1e-9])]
    for number, (argv, scales) in enumerate(cases):
        shot = tmp_path / f"shot{number}.png"
        assert main(["view"] + argv + ["--screenshot", str(shot)]) == 0, \
            capsys.readouterr().err
        assert seen["scales"] == pytest.approx(scales), argv
        assert seen["units"] == ["m", "m", "m"]


# ---------------------------------------------------------------- precomputed meshes in the browser

def range_file_server(folder):
    """A static HTTP server of ``folder`` on a free port that answers Range requests and
    sends CORS headers (Neuroglancer fetches multi-resolution mesh fragments by range)."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def do_GET(self):
            spec = self.headers.get("Range", "")
            path = Path(self.translate_path(self.path))
            if not spec.startswith("bytes=") or not path.is_file():
                return super().do_GET()
            data = path.read_bytes()
            start, _, stop = spec[len("bytes="):].partition("-")
            start, stop = int(start), (int(stop) if stop else len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
            self.send_header("Content-Length", str(stop + 1 - start))
            self.end_headers()
            self.wfile.write(data[start:stop + 1])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@needs_browser
@pytest.mark.large
def test_exported_multiresolution_meshes_render_in_the_browser(tmp_path):
    """export-precomputed --mesh output, served over HTTP, is drawn by Neuroglancer's own
    multi-resolution mesh reader: only meshes are on screen (no slices), each id where its
    voxels are. Both ids span 2 x 2 x 2 blocks."""
    import neuroglancer

    labels = np.zeros((32, 128, 128), np.uint32)
    labels[4:28, 16:112, 8:56] = LEFT  # small x
    labels[4:28, 16:112, 72:120] = RIGHT  # large x
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    out = tmp_path / "ng"
    assert main(["export-precomputed", str(tmp_path / "labels.tif"), str(out), "--mesh",
                 "--voxel-size", "30,6,6", "--block", "64", "--block-z", "16"]) == 0
    server = range_file_server(out)
    viewer = neuroglancer.Viewer()
    driver = None
    try:
        with viewer.txn() as state:
            state.layers["cells"] = neuroglancer.SegmentationLayer(
                source=f"precomputed://http://127.0.0.1:{server.server_port}/segmentation")
            state.layout = "3d"
            state.show_slices = False
            state.show_axis_lines = False
            state.show_default_annotations = False  # no bounding box
            state.show_scale_bar = False
        driver = viewer_lib.open_browser(viewer.get_viewer_url(), size=(400, 300))
        viewer_lib.browser_state(driver)
        centres = {}
        for ids in ([], [LEFT], [RIGHT]):
            with viewer.txn() as state:
                state.layers["cells"].segments = set(ids)
            mask = coloured(viewer_lib.screenshot_image(viewer, size=(400, 300)))
            if not ids:
                assert mask.sum() == 0  # nothing but meshes is drawn
                continue
            assert mask.sum() > 500, ids
            rows, cols = np.nonzero(mask)
            centres[ids[0]] = cols.mean()
            # seen along z: 48 voxels wide (x), 96 high (y)
            assert 1.6 < np.ptp(rows) / np.ptp(cols) < 2.4, (ids, np.ptp(rows), np.ptp(cols))
        assert centres[LEFT] < centres[RIGHT]
    finally:
        if driver is not None:
            driver.quit()
        server.shutdown()
