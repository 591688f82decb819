"""Block-wise volume prediction: geometry, stores, equality with in-memory
prediction, resume after faults, errors, and Dask execution (2 workers)."""

import json

import h5py
import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from fusionnet_tf import cli  # noqa: E402
from fusionnet_tf.volumes import (BlockFailures, block_grid, open_volume,  # noqa: E402
                                   predict_volume)
from fusionnet_tf.volumes import geometry, storage  # noqa: E402

TILE, OVERLAP, BLOCK = 64, 16, (1, 128, 128)
# engine "plain": the auto engine may time and pick frozen or XLA (equal only to ~2e-6) in
# one process and plain in another; the engine tests below choose it explicitly
OPTIONS = dict(tile_shape=TILE, overlap=OVERLAP, batch_size=4, engine="plain", tta=1)


# ----------------------------------------------------------------- fixtures

def synthetic_volume(shape=(3, 300, 500), seed=0):
    """uint8 (Z, Y, X) with blobs and a different intensity range per slice."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x]
    slices = []
    for i in range(z):
        image = np.sin(yy / (7 + i)) * np.cos(xx / 11) + 0.3 * rng.standard_normal((y, x))
        image = (image - image.min()) / np.ptp(image)
        slices.append(20 * i + image * (200 - 40 * i))
    return np.stack(slices).astype(np.uint8)


@pytest.fixture(scope="module")
def volume():
    return synthetic_volume()


@pytest.fixture(scope="module")
def model_path(tiny_model_file):
    return tiny_model_file


@pytest.fixture(scope="module")
def predictor(model_path):
    from fusionnet_tf.inference import Predictor, load_model

    return Predictor(load_model(model_path), **OPTIONS)


@pytest.fixture(scope="module")
def reference(volume, predictor):
    """In-memory prediction of the whole volume, as ``fusionnet predict`` does it."""
    from fusionnet_tf.data.normalize import normalize

    return predictor.predict(normalize(volume))


@pytest.fixture(scope="module")
def blockwise_run(tmp_path_factory, volume, predictor):
    """In-process block-wise run of the volume (zarr v2 input): (input spec, output, summary)."""
    folder = tmp_path_factory.mktemp("blockwise")
    spec = write_zarr(folder / "vol.zarr", volume, zarr_format=2)
    out = folder / "out.zarr"
    summary = predict_volume(spec, out, predictor, block_shape=BLOCK, **OPTIONS)
    return spec, out, summary


@pytest.fixture(autouse=True)
def _only_this_subcommand(monkeypatch):
    """``main`` builds only ``predict-volume``: these tests do not depend on the others."""
    monkeypatch.setattr(cli, "COMMANDS", {"predict-volume": "fusionnet_tf.cli.predict_volume"})


def main(argv):
    return cli.main(argv)


def write_zarr(path, array, zarr_format=3, chunks=(1, 100, 100)):
    out = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=chunks,
                          dtype=array.dtype, zarr_format=zarr_format)
    out[:] = array
    return str(path)


def write_h5(path, key, array):
    with h5py.File(path, "w") as handle:
        handle.create_dataset(key, data=array, chunks=True)
    return f"{path}:/{key}"


def read_output(path):
    return zarr.open_array(str(path), mode="r")[:]


def done_count(path):
    folder = path / storage.DONE_DIR
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


# ----------------------------------------------------------------- geometry

def test_block_grid_covers_volume_exactly():
    shape = (3, 300, 500)
    coverage = np.zeros(shape, np.int32)
    blocks = block_grid(shape, (2, 128, 128))
    for block in blocks:
        coverage[slice(*block.z), slice(*block.y), slice(*block.x)] += 1
    assert (coverage == 1).all()
    assert len(blocks) == 2 * 3 * 4
    assert blocks[-1].index == (1, 2, 3) and blocks[-1].shape == (1, 44, 116)
    assert blocks[5].name == "0.1.1"


@pytest.mark.parametrize("bad", [(1, 0, 128), (128, 128), (1, 2.5, 3), "abc"])
def test_bad_block_shape(bad):
    with pytest.raises(ValueError, match="block_shape"):
        block_grid((3, 300, 500), bad)


def test_tiles_for_block_selects_overlapping_tiles_and_halo():
    from fusionnet_tf.inference.tiling import tile_origins

    origins = tile_origins(300, 500, TILE, OVERLAP)
    blocks = block_grid((1, 300, 500), BLOCK)
    seen = set()
    for block in blocks:
        tiles = geometry.tiles_for_block(origins, TILE, block.y, block.x)
        (ry0, ry1), (rx0, rx1) = geometry.tiles_region(tiles, TILE)
        assert ry0 <= block.y[0] and ry1 >= block.y[1] and rx0 <= block.x[0] and rx1 >= block.x[1]
        for oy, ox in origins:  # exactly the tiles touching the block
            touches = oy < block.y[1] and oy + TILE > block.y[0] \
                and ox < block.x[1] and ox + TILE > block.x[0]
            assert ((oy, ox) in tiles) == touches
        seen.update(tiles)
    assert seen == set(origins)
    halo_y, halo_x = geometry.halo(origins, TILE, (1, 300, 500), BLOCK)
    steps_x = np.diff(sorted({ox for _, ox in origins}))
    assert halo_x >= TILE - steps_x.max()
    assert halo_y >= TILE - np.diff(sorted({oy for oy, _ in origins})).max()


@pytest.mark.parametrize("batch_size, tta, count", [(4, 1, 5), (4, 1, 8), (4, 8, 3), (8, 4, 3), (3, 1, 1)])
def test_every_network_call_is_a_full_batch(batch_size, tta, count):
    """Tile results must not depend on how many tiles a call carries (oneDNN)."""
    from fusionnet_tf.inference import Predictor

    calls = []

    def network(batch):
        calls.append(len(batch))
        return batch * 0.5

    predictor = Predictor(network, tile_shape=4, overlap=0, tta=tta, batch_size=batch_size)
    tiles = np.random.default_rng(0).random((count, 4, 4)).astype(np.float32)
    out = predictor.predict_tiles(tiles)
    assert set(calls) == {batch_size}
    np.testing.assert_allclose(out, tiles * 0.5, rtol=1e-6)


# ----------------------------------------------------------------- input stores

@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_zarr_array_and_group(tmp_path, volume, zarr_format):
    spec = write_zarr(tmp_path / "vol.zarr", volume, zarr_format)
    array, name = open_volume(spec)
    np.testing.assert_array_equal(array[1, 10:20, 30:40], volume[1, 10:20, 30:40])
    assert name == spec
    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("raw", shape=volume.shape, dtype=volume.dtype, chunks=(1, 128, 128))
    group["raw"][:] = volume
    array, name = open_volume(f"{tmp_path / 'group.zarr'}:/raw")
    np.testing.assert_array_equal(array[:], volume)
    with pytest.raises(KeyError, match="'/labels' not found.*'/raw'"):
        open_volume(f"{tmp_path / 'group.zarr'}:/labels")


def test_open_hdf5_key_errors_and_dimensions(tmp_path, volume):
    spec = write_h5(tmp_path / "vol.h5", "em/raw", volume)
    array, name = open_volume(spec)
    np.testing.assert_array_equal(array[2], volume[2])
    array.file.close()
    array, _ = open_volume(tmp_path / "vol.h5")  # one dataset: the key is optional
    assert array.shape == volume.shape
    array.file.close()
    with pytest.raises(KeyError, match=r"'/missing' not found in HDF5 file .*vol.h5.*/em/raw"):
        open_volume(f"{tmp_path / 'vol.h5'}:/missing")
    with h5py.File(tmp_path / "dims.h5", "w") as handle:
        handle["flat"] = volume[0]
        handle["rgb"] = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"dims.h5:/flat has shape \(300, 500\) \(2D\)"):
        open_volume(f"{tmp_path / 'dims.h5'}:/flat")
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 3\) \(4D\)"):
        open_volume(f"{tmp_path / 'dims.h5'}:/rgb")
    with pytest.raises(ValueError, match="2 datasets"):
        open_volume(tmp_path / "dims.h5")
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        open_volume(tmp_path / "nowhere.zarr")


# ----------------------------------------------------------------- output store

def test_existing_output_with_other_shape_or_settings(tmp_path):
    out = tmp_path / "out.zarr"
    settings = {"tile_shape": 64, "overlap": 16}
    storage.create_output(out, (3, 300, 500), BLOCK, settings)
    with pytest.raises(ValueError, match=r"shape \(3, 300, 500\).*shape \(3, 300, 400\)"):
        storage.open_output_for_resume(out, (3, 300, 400), BLOCK, settings)
    with pytest.raises(ValueError, match="overlap: 16 -> 32"):
        storage.open_output_for_resume(out, (3, 300, 500), BLOCK, {**settings, "overlap": 32})
    assert storage.open_output_for_resume(out, (3, 300, 500), BLOCK, settings) is not None
    assert storage.open_output_for_resume(out, (3, 300, 400), BLOCK, settings,
                                          overwrite=True) is None
    (tmp_path / "notzarr").mkdir()
    (tmp_path / "notzarr" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="notzarr exists and holds files this command did not write"):
        storage.open_output_for_resume(tmp_path / "notzarr", (3, 300, 500), BLOCK, settings,
                                       overwrite=True)


def test_intensity_ranges_match_whole_slices(volume, monkeypatch):
    from fusionnet_tf.data.normalize import intensity_range
    from fusionnet_tf.volumes.executors import LocalExecutor
    from fusionnet_tf.volumes.runner import intensity_ranges

    # per-block range tasks open the input themselves: serve the in-memory array
    monkeypatch.setattr(storage, "open_volume", lambda spec: (volume, "memory"))
    blocks = block_grid(volume.shape, (2, 128, 128))
    for mode in ("slice", "global", "dtype"):
        lo, hi = intensity_ranges(volume, blocks, mode, LocalExecutor(), "memory")
        ref_lo, ref_hi = intensity_range(volume, mode)
        assert lo.dtype == hi.dtype == np.float32
        np.testing.assert_array_equal(lo, ref_lo)
        np.testing.assert_array_equal(hi, ref_hi)
    slice_lo, _ = intensity_ranges(volume, blocks, "slice", LocalExecutor(), "memory")
    assert len(set(slice_lo.tolist())) == 3  # the slices really differ


# ----------------------------------------------------------------- in-process runs

def test_blockwise_equals_in_memory_prediction(volume, predictor, reference, blockwise_run):
    _, out, summary = blockwise_run
    result = read_output(out)
    assert result.dtype == np.float32 and result.shape == volume.shape
    assert reference.std() > 1e-3  # the model is not constant: the comparison means something
    np.testing.assert_allclose(result, reference, atol=1e-5, rtol=0)
    assert summary["blocks_total"] == summary["blocks_computed"] == 36
    # tiles straddling block borders are predicted by each block they touch
    origins = predictor.tile_origins(300, 500)
    per_slice = sum(len(geometry.tiles_for_block(origins, TILE, b.y, b.x))
                    for b in block_grid((1, 300, 500), BLOCK))
    assert summary["tiles_predicted"] == 3 * per_slice
    assert summary["tile_ratio"] == pytest.approx(per_slice / len(origins))
    assert summary["halo"] == geometry.halo(predictor.tile_origins(300, 500), TILE,
                                            volume.shape, BLOCK)
    assert zarr.open_array(str(out), mode="r").chunks == BLOCK
    assert done_count(out) == 36


def test_default_batch_blockwise_equals_in_memory_with_calls_of_one_size(tmp_path, volume,
                                                                         model_path):
    """With the default batch size every call of both runs holds one slice's 12 tiles."""
    from fusionnet_tf.data.normalize import normalize
    from fusionnet_tf.inference import Predictor, load_model
    from fusionnet_tf.inference.predictor import KerasFunction

    network = KerasFunction(load_model(model_path), TILE)
    sizes = []

    def recording(batch):
        sizes.append(len(batch))
        return network(batch)

    predictor = Predictor(recording, tile_shape=TILE, overlap=OVERLAP, tta=1)
    small = volume[:, :128, :200]  # fewer tiles than a call could hold (16 of 64 px)
    assert predictor.inputs_per_call(128, 200) == len(predictor.tile_origins(128, 200)) == 12
    expected = predictor.predict(normalize(small))
    assert set(sizes) == {12}
    sizes.clear()
    spec = write_zarr(tmp_path / "vol.zarr", small)
    out = tmp_path / "out.zarr"
    predict_volume(spec, out, predictor, block_shape=BLOCK, tile_shape=TILE, overlap=OVERLAP,
                   tta=1)
    assert set(sizes) == {12}
    np.testing.assert_array_equal(read_output(out), expected)


def test_worker_predictor_cache_keeps_the_last_specs_only(model_path):
    from fusionnet_tf.predict_options import PredictOptions
    from fusionnet_tf.volumes import blockwise

    blockwise.worker_predictor.cache_clear()
    specs = [blockwise.PredictorSpec(model=str(model_path), options=PredictOptions(
        tile_shape=tile, overlap=8, engine="plain")) for tile in (32, 48, 64)]
    loads = blockwise.predictor_loads()
    first = blockwise.worker_predictor(specs[0])
    assert blockwise.worker_predictor(specs[0]) is first  # loaded once
    for spec in specs[1:]:
        blockwise.worker_predictor(spec)
    assert blockwise.predictor_loads() == loads + 3
    assert blockwise.worker_predictor.cache_info().currsize == \
        blockwise.MAX_CACHED_PREDICTORS == 2
    assert blockwise.worker_predictor(specs[0]) is not first  # the oldest was let go: reloaded
    assert blockwise.predictor_loads() == loads + 4
    blockwise.worker_predictor.cache_clear()


def test_auto_engine_is_recorded_and_kept_on_resume(tmp_path, volume, model_path):
    from fusionnet_tf.inference import PredictOptions, Predictor, autotune, load_model
    from fusionnet_tf.volumes import runner

    clock = {"plain": 20.0, "frozen": 20.0, "xla": 10.0}
    timed = []

    def fake_timer(network, batch):
        timed.append(network.variant.label)
        return clock[network.variant.label], network(batch)

    model = load_model(model_path)

    def timed_predictor():
        """A live auto-engine Predictor of the options below, timed by ``fake_timer``."""
        predictor = Predictor(model, tile_shape=TILE, overlap=OVERLAP, batch_size=1, tta=1)
        predictor.network.timer = fake_timer
        return predictor

    spec = write_zarr(tmp_path / "vol.zarr", volume[:1, :128, :256])
    out = tmp_path / "out.zarr"
    # one tile per call: 15 calls, enough to be worth timing
    options = dict(block_shape=BLOCK, tile_shape=TILE, overlap=OVERLAP, batch_size=1, tta=1)
    predict_volume(spec, out, timed_predictor(), **options)  # engine="auto": xla is faster
    assert timed and storage.recorded_settings(out)["engine"] == "xla"
    first = read_output(out)
    storage.done_marker(out, block_grid((1, 128, 256), BLOCK)[1]).unlink()
    autotune.cache_path().unlink()
    clock.update(plain=1.0)  # plain would win now, but the output was started with xla
    timed.clear()
    summary = predict_volume(spec, out, timed_predictor(), **options)
    assert summary["blocks_computed"] == 1 and not timed
    assert storage.recorded_settings(out)["engine"] == "xla"
    np.testing.assert_array_equal(read_output(out), first)
    with pytest.raises(ValueError, match="engine: 'xla' -> 'plain'"):
        predict_volume(spec, out, timed_predictor(), engine="plain", **options)
    # outputs of earlier versions did not record the engine: they resume with any
    array = zarr.open_array(out, mode="r+")
    settings = dict(array.attrs[storage.ATTRS_KEY])
    del settings["engine"]
    array.attrs[storage.ATTRS_KEY] = settings
    resumed = predict_volume(spec, out, timed_predictor(), engine="xla", **options)
    assert resumed["blocks_skipped"] == 2
    timed.clear()
    assert predict_volume(spec, out, timed_predictor(), **options)["blocks_skipped"] == 2
    assert not timed  # "auto" resumes such an output plain (their default), untimed
    # with Dask the variant is chosen once, in this process, and handed to the workers explicitly
    options = PredictOptions(tile_shape=TILE, overlap=OVERLAP, tta=1)
    assert runner._call_plan(options, (1, 128, 256)) == (1, 15)  # 3 x 5 tiles in one call
    options = options.replace(batch_size=1)
    plan = runner._call_plan(options, (1, 128, 256))
    assert plan == (15, 1)
    timed_predictor().resolve_engine(calls=15, inputs=1)  # times the batch of one: plain, cached
    assert timed
    variant = runner._client_variant(str(model_path), options, plan, False)  # from the cache
    assert variant == {"engine": "plain", "precision": "float32"}
    assert runner._explicit(options, variant).engine == "plain"
    assert runner._client_variant(str(model_path), options.replace(engine="xla"), plan, False) \
        == {"engine": "xla", "precision": "float32"}  # explicit: nothing to load or time


def test_hdf5_small_slices_deep_blocks_and_tta(tmp_path, model_path):
    """Slices smaller than a tile (reflect padding) and blocks of 2 slices, TTA 8."""
    from fusionnet_tf.data.normalize import normalize
    from fusionnet_tf.inference import Predictor, load_model

    small = synthetic_volume((3, 40, 90), seed=1).astype(np.uint16) * 50
    spec = write_h5(tmp_path / "small.h5", "raw", small)
    tta = Predictor(load_model(model_path), **{**OPTIONS, "tta": 8})
    expected = tta.predict(normalize(small))
    out = tmp_path / "small.zarr"
    summary = predict_volume(spec, out, tta, block_shape=(2, 32, 48), **{**OPTIONS, "tta": 8})
    np.testing.assert_allclose(read_output(out), expected, atol=1e-5, rtol=0)
    assert summary["blocks_computed"] == 2 * 2 * 2


class SimulatedKill(BaseException):
    """Not an Exception: stops the run like a kill would."""


def test_fault_and_kill_then_resume(tmp_path, volume, predictor, reference, blockwise_run):
    spec = write_zarr(tmp_path / "vol.zarr", volume)  # zarr v3 this time
    _, clean, _ = blockwise_run

    # a fault in one block: the others finish, that block stays unwritten
    out = tmp_path / "out.zarr"

    def fail_one(block):
        if block.index == (1, 1, 2):
            raise RuntimeError("injected fault")

    with pytest.raises(BlockFailures, match="1 of 36 blocks failed.*1.1.2.*injected fault"):
        predict_volume(spec, out, predictor, block_shape=BLOCK, block_hook=fail_one, **OPTIONS)
    assert done_count(out) == 35
    assert (read_output(out)[1, 128:256, 256:384] == 0).all()

    computed = []
    summary = predict_volume(spec, out, predictor, block_shape=BLOCK,
                             block_hook=lambda b: computed.append(b.index), **OPTIONS)
    assert computed == [(1, 1, 2)]
    assert summary["blocks_computed"] == 1 and summary["blocks_skipped"] == 35
    np.testing.assert_array_equal(read_output(out), read_output(clean))

    # a kill after 10 blocks: rerun computes only the other 26
    killed = tmp_path / "killed.zarr"
    count = {"n": 0}

    def kill_after_ten(block):
        count["n"] += 1
        if count["n"] > 10:
            raise SimulatedKill()

    with pytest.raises(SimulatedKill):
        predict_volume(spec, killed, predictor, block_shape=BLOCK, block_hook=kill_after_ten,
                       **OPTIONS)
    assert done_count(killed) == 10
    summary = predict_volume(spec, killed, predictor, block_shape=BLOCK, **OPTIONS)
    assert summary["blocks_computed"] == 26 and summary["blocks_skipped"] == 10
    np.testing.assert_array_equal(read_output(killed), read_output(clean))
    np.testing.assert_allclose(read_output(killed), reference, atol=1e-5, rtol=0)
    marker = json.loads((killed / storage.DONE_DIR / "0.0.0.json").read_text())
    assert marker["y"] == [0, 128] and marker["x"] == [0, 128]


@pytest.mark.parametrize("fault", ["while_writing_data", "after_data_before_marker"])
def test_done_marker_is_written_only_after_the_data(tmp_path, volume, predictor, monkeypatch,
                                                    fault):
    """A kill between a block's data write and its marker leaves it unmarked, so it is redone."""
    from fusionnet_tf.data.normalize import normalize

    small = volume[:1, :128, :256]  # two blocks; the second one is killed
    spec = write_zarr(tmp_path / "vol.zarr", small)
    out = tmp_path / "out.zarr"
    victim = (0, 0, 1)
    armed = {"kill": True}
    write_block, mark_done = storage.write_block, storage.mark_done

    def faulty_write(path, block, data):
        if armed["kill"] and block.index == victim and fault == "while_writing_data":
            raise SimulatedKill()  # the chunk never reaches the store
        write_block(path, block, data)

    def checked_mark(path, block, info):
        stored = zarr.open_array(str(path), mode="r")[slice(*block.z), slice(*block.y),
                                                      slice(*block.x)]
        assert (stored != 0).all(), f"marker of block {block.name} written before its data"
        if armed["kill"] and block.index == victim and fault == "after_data_before_marker":
            raise SimulatedKill()
        mark_done(path, block, info)

    monkeypatch.setattr(storage, "write_block", faulty_write)
    monkeypatch.setattr(storage, "mark_done", checked_mark)
    with pytest.raises(SimulatedKill):
        predict_volume(spec, out, predictor, block_shape=BLOCK, **OPTIONS)
    assert done_count(out) == 1 and not storage.is_done(out, block_grid(small.shape, BLOCK)[1])

    armed["kill"] = False
    computed = []
    summary = predict_volume(spec, out, predictor, block_shape=BLOCK,
                             block_hook=lambda b: computed.append(b.index), **OPTIONS)
    assert computed == [victim] and summary["blocks_skipped"] == 1
    np.testing.assert_allclose(read_output(out), predictor.predict(normalize(small)), atol=1e-5,
                               rtol=0)


def test_resume_refuses_other_settings_and_overwrite_restarts(tmp_path, volume, predictor):
    spec = write_zarr(tmp_path / "vol.zarr", volume[:1, :128, :200])
    out = tmp_path / "out.zarr"
    predict_volume(spec, out, predictor, block_shape=BLOCK, zarr_format=2, **OPTIONS)
    assert (out / ".zarray").is_file() and done_count(out) == 2
    with pytest.raises(ValueError, match="overlap: 16 -> 32.*--overwrite"):
        predict_volume(spec, out, predictor, block_shape=BLOCK, **{**OPTIONS, "overlap": 32})
    with pytest.raises(ValueError, match=r"chunks \(1, 128, 128\).*blocks \(1, 64, 64\)"):
        predict_volume(spec, out, predictor, block_shape=(1, 64, 64), **OPTIONS)
    summary = predict_volume(spec, out, predictor, block_shape=(1, 64, 64), overwrite=True,
                             **OPTIONS)
    assert summary["blocks_computed"] == 2 * 4 and done_count(out) == 8
    with pytest.raises(ValueError, match="would overwrite INPUT"):
        predict_volume(spec, spec, predictor, block_shape=BLOCK, overwrite=True, **OPTIONS)
    assert zarr.open_array(spec, mode="r").shape == (1, 128, 200)  # input untouched


@pytest.mark.e2e
@pytest.mark.large
def test_sigkill_mid_run_then_resume(tmp_path, volume, model_path, blockwise_run):
    """A real kill (SIGKILL) of the CLI after a few blocks; the rerun finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = write_zarr(tmp_path / "vol.zarr", volume)
    out = tmp_path / "out.zarr"
    command = [sys.executable, "-m", "fusionnet_tf", "predict-volume", spec, str(out),
               "--model", str(model_path), "--workers", "0", "--block", "128", "--tile-size",
               str(TILE), "--overlap", str(OVERLAP), "--tta", "1", "--engine", "plain", "--batch-size", "4", "--quiet"]  # = OPTIONS
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900  # a safety net only: start-up is slow on a busy machine
    while done_count(out) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    before = done_count(out)
    assert 4 <= before < 36, stderr
    summary = predict_volume(spec, out, model_path, block_shape=BLOCK, **OPTIONS)
    assert summary["blocks_skipped"] == before
    assert summary["blocks_computed"] == 36 - before
    # blocks from another process: oneDNN may pick other kernels there (its primitive cache
    # depends on what ran before in a process), which moves values by ~2e-6
    np.testing.assert_allclose(read_output(out), read_output(blockwise_run[1]), atol=1e-5, rtol=0)


# ----------------------------------------------------------------- CLI

def test_cli_errors_are_one_line(tmp_path, volume, model_path, capsys):
    h5 = write_h5(tmp_path / "vol.h5", "raw", volume[:1, :64, :64])
    code = main(["predict-volume", str(tmp_path / "vol.h5") + ":/nope", str(tmp_path / "o.zarr"),
                 "--model", str(model_path), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "predict-volume: error: dataset key '/nope' not found" in err
    with h5py.File(tmp_path / "flat.h5", "w") as handle:
        handle["raw"] = volume[0]
    code = main(["predict-volume", f"{tmp_path / 'flat.h5'}:/raw", str(tmp_path / "o.zarr"),
                 "--model", str(model_path), "--workers", "0"])
    assert code == 2 and "(300, 500) (2D)" in capsys.readouterr().err
    storage.create_output(tmp_path / "other.zarr", (2, 64, 64), (1, 64, 64), {})
    code = main(["predict-volume", h5, str(tmp_path / "other.zarr"), "--model", str(model_path),
                 "--workers", "0", "--block", "64", "--tile-size", "64", "--overlap", "16"])
    err = capsys.readouterr().err
    assert code == 2 and "exists with shape (2, 64, 64)" in err and "(1, 64, 64)" in err


def float_volume_with(value, where=(1, 100, 200)):
    """float32 (2, 128, 256) volume with one ``value`` (NaN / inf) at ``where``."""
    array = synthetic_volume((2, 128, 256)).astype(np.float32) / 255
    array[where] = value
    return array


@pytest.mark.parametrize("normalization", ["slice", "global", "dtype"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_input_is_refused_before_the_output_exists(tmp_path, predictor, value,
                                                              normalization):
    spec = write_zarr(tmp_path / "vol.zarr", float_volume_with(value), chunks=(1, 64, 64))
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match=rf"^INPUT {spec} contains NaN or infinite values "
                                         r"\(slice z=1, block 1\.1\.3: y 64:128, x 192:256\)"):
        predict_volume(spec, out, predictor, block_shape=(1, 64, 64),
                       normalization=normalization, **OPTIONS)
    assert not out.exists()


def test_cli_nan_input_fails_in_one_line_naming_it_without_output(tmp_path, model_path,
                                                                  capsys):
    spec = write_zarr(tmp_path / "vol.zarr", float_volume_with(np.nan), chunks=(1, 64, 64))
    out = tmp_path / "out.zarr"
    code = main(["predict-volume", spec, str(out), "--model", str(model_path), "--workers", "0",
                 "--block", "64", "--tile-size", str(TILE), "--overlap", str(OVERLAP), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"fusionnet predict-volume: error: INPUT {spec} contains "
                                        "NaN or infinite values (slice z=1, block 1.1.3: y "
                                        "64:128, x 192:256); replace them (e.g. numpy.nan_to_num)"
                                        " before predicting"]
    assert not out.exists()


def test_finite_float_input_with_dtype_normalization_uses_the_dtype_range(tmp_path, predictor):
    spec = write_zarr(tmp_path / "vol.zarr", float_volume_with(0.5), chunks=(1, 64, 64))
    out = tmp_path / "out.zarr"
    predict_volume(spec, out, predictor, block_shape=(1, 128, 256), normalization="dtype",
                   **OPTIONS)
    stored = zarr.open_array(str(out), mode="r").attrs[storage.ATTRS_KEY]
    assert stored["intensity_lo"] == [0.0, 0.0] and stored["intensity_hi"] == [1.0, 1.0]


def test_missing_extra_names_it(tmp_path, volume, model_path, monkeypatch, capsys):
    import sys

    spec = write_h5(tmp_path / "vol.h5", "raw", volume[:1, :64, :64])
    monkeypatch.setitem(sys.modules, "zarr", None)  # as if zarr were not installed
    code = main(["predict-volume", spec, str(tmp_path / "o.zarr"), "--model", str(model_path),
                 "--workers", "0", "--tile-size", "64", "--overlap", "16"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'fusionnet-tf[volumes]'" in err
    monkeypatch.setitem(sys.modules, "zarr", zarr)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"dask\[distributed\].*fusionnet-tf\[volumes\]"):
        predict_volume(spec, tmp_path / "o.zarr", model_path, workers=2, **OPTIONS)


def test_cli_xla_run_matches_in_memory_prediction(tmp_path, volume, model_path, reference):
    spec = write_h5(tmp_path / "vol.h5", "raw", volume)
    out = tmp_path / "xla.zarr"
    code = main(["predict-volume", spec, str(out), "--model", str(model_path), "--workers", "0",
                 "--block", "256", "--tile-size", str(OPTIONS["tile_shape"]),
                 "--overlap", str(OPTIONS["overlap"]), "--tta", "1",
                 "--batch-size", str(OPTIONS["batch_size"]), "--engine", "xla",
                 "--quiet"])
    assert code == 0
    np.testing.assert_allclose(read_output(out), reference, atol=1e-4, rtol=0)


def test_cli_bfloat16_run_is_close_and_cannot_be_resumed_in_float32(tmp_path, volume, model_path,
                                                                     reference, capsys):
    spec = write_h5(tmp_path / "vol.h5", "raw", volume)
    out = tmp_path / "bf16.zarr"
    args = ["predict-volume", spec, str(out), "--model", str(model_path), "--workers", "0",
            "--block", "256", "--tile-size", str(OPTIONS["tile_shape"]),
            "--overlap", str(OPTIONS["overlap"]), "--tta", "1",
            "--batch-size", str(OPTIONS["batch_size"]), "--engine", OPTIONS["engine"], "--quiet"]
    assert main(args + ["--precision", "mixed_bfloat16"]) == 0
    difference = np.abs(read_output(out) - reference)
    assert 0 < difference.max() < 5e-2  # bfloat16 rounding, not another model
    capsys.readouterr()
    assert main(args + ["--precision", "float32"]) == 2  # a resume must not mix precisions
    assert "precision: 'mixed_bfloat16' -> 'float32'" in capsys.readouterr().err


def test_half_precision_with_a_savedmodel_fails_before_any_work(tmp_path, volume):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")  # only its being a folder matters here
    spec = write_zarr(tmp_path / "vol.zarr", volume[:1, :64, :64])
    out = tmp_path / "out.zarr"
    with pytest.raises(ValueError, match=r"precision='mixed_bfloat16' applies to Keras models only; the SavedModel .*saved"):
        predict_volume(spec, out, str(saved), block_shape=BLOCK, workers=2,
                       **{**OPTIONS, "precision": "mixed_bfloat16"})
    assert not out.exists()


def test_outputs_of_earlier_versions_resume_as_float32(tmp_path, volume, predictor, model_path):
    from fusionnet_tf.volumes import storage

    spec = write_zarr(tmp_path / "vol.zarr", volume[:1, :128, :200])
    out = tmp_path / "out.zarr"
    predict_volume(spec, out, predictor, block_shape=BLOCK, **OPTIONS)
    array = zarr.open_array(out, mode="r+")
    settings = dict(array.attrs[storage.ATTRS_KEY])
    del settings["precision"]  # as written before the setting was recorded
    array.attrs[storage.ATTRS_KEY] = settings
    assert predict_volume(spec, out, predictor, block_shape=BLOCK, **OPTIONS)["blocks_skipped"] == 2
    with pytest.raises(ValueError, match="precision: 'float32' -> 'mixed_bfloat16'"):
        predict_volume(spec, out, str(model_path), block_shape=BLOCK,
                       **{**OPTIONS, "precision": "mixed_bfloat16"})


def test_a_live_predictor_must_match_the_settings_and_its_variant_is_recorded(
        tmp_path, volume, model_path):
    from fusionnet_tf.inference import Predictor, load_model
    from fusionnet_tf.volumes import storage

    spec = write_zarr(tmp_path / "vol.zarr", volume[:1, :64, :64])
    bf16 = Predictor(load_model(model_path), **{**OPTIONS, "precision": "mixed_bfloat16"})
    with pytest.raises(ValueError, match="asks for engine 'plain' and precision 'float32', "
                                         "but the Predictor runs .* 'mixed_bfloat16'"):
        predict_volume(spec, tmp_path / "a.zarr", bf16, block_shape=BLOCK, **OPTIONS)
    assert not (tmp_path / "a.zarr").exists()
    # with precision "auto" the live Predictor's own precision is what runs and is recorded
    out = tmp_path / "b.zarr"
    predict_volume(spec, out, bf16, block_shape=BLOCK, **{**OPTIONS, "precision": "auto"})
    settings = zarr.open_array(out, mode="r").attrs[storage.ATTRS_KEY]
    assert settings["precision"] == "mixed_bfloat16" and settings["engine"] == "plain"
    with pytest.raises(ValueError, match="precision: 'mixed_bfloat16' -> 'float32'"):
        predict_volume(spec, out, str(model_path), block_shape=BLOCK, **OPTIONS)


def test_cli_help_states_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["predict-volume", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 1024)", "(default: 64)", "(default: 512)", "(default: 1)",
                    "(default: 8", "(default: slice)", "(default: 3)"):
        assert default in text


# ----------------------------------------------------------------- Dask

@pytest.mark.e2e
@pytest.mark.large
def test_local_cluster_two_workers_equal_in_memory(tmp_path, volume, model_path, reference):
    spec = write_h5(tmp_path / "vol.h5", "raw", volume)
    out = tmp_path / "out.zarr"
    summary = predict_volume(spec, out, model_path, block_shape=BLOCK, workers=2, **OPTIONS)
    np.testing.assert_allclose(read_output(out), reference, atol=1e-5, rtol=0)
    assert len(summary["blocks_per_worker"]) == 2  # both workers received blocks
    assert sum(summary["blocks_per_worker"].values()) == 36
    assert set(summary["model_loads"].values()) == {1}  # each worker loaded the model once
    assert summary["executor"].startswith("dask tcp://")


@pytest.mark.e2e
@pytest.mark.large
def test_cli_scheduler_two_workers_then_resume(tmp_path, volume, model_path, reference,
                                               dask_cluster, capsys):
    cluster = dask_cluster
    spec = write_zarr(tmp_path / "vol.zarr", volume)
    out = tmp_path / "out.zarr"
    command = ["predict-volume", spec, str(out), "--model", str(model_path),
               "--scheduler", cluster.scheduler_address, "--tf-threads", "1", "--block", "128",
               "--tile-size", str(TILE), "--overlap", str(OVERLAP), "--tta", "1", "--quiet"]
    code = main(command)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "36 blocks (36 computed, 0 already done) on 2 worker(s)" in err
    np.testing.assert_allclose(read_output(out), reference, atol=1e-5, rtol=0)
    workers = {json.loads(m.read_text())["worker"] for m in (out / storage.DONE_DIR).iterdir()}
    assert workers == set(cluster.scheduler_info["workers"])
    assert main(command) == 0
    assert "36 blocks (0 computed, 36 already done)" in capsys.readouterr().err
