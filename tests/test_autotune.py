"""The auto engine: it times the eligible variants once, keeps the fastest, caches the choice;
and calls are never padded past one slice's tiles."""

import json

import keras
import numpy as np
import pytest

from fusionnet_tf.inference import PredictOptions, Predictor, autotune

TILE = 32


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Each test gets an empty autotune cache of its own."""
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


def tiles(count=2, seed=0):
    return np.random.default_rng(seed).random((count, TILE, TILE)).astype(np.float32)


def label(network):
    """The variant label of a network built for the auto engine."""
    return network.variant.label


# What the stand-in of each variant but plain returns, everywhere: distinct, so a result
# tells which variant computed it
STAND_IN = {"frozen": 0.25, "xla": 0.75, "plain+mixed_bfloat16": 0.125,
            "xla+mixed_bfloat16": 0.875}


class StandIn:
    """A network of one variant that runs no model: every output value is ``STAND_IN[label]``.

    The auto engine's choice does not depend on what a variant computes, so the
    timing tests need no XLA compilation or constant folding; plain, the fallback
    built with the Predictor, stays the real network. The real variants are
    tested with explicit engines (tests/test_predictor.py and below).
    """

    def __init__(self, variant):
        self.variant = variant

    def __call__(self, batch):
        return np.full(batch.shape, STAND_IN[self.variant.label], np.float32)


def output_of(label_, model, images, **options):
    """What the variant ``label_`` returns for ``images`` (``Predictor.predict_tiles``)."""
    if label_ == "plain":
        return Predictor(model, tile_shape=TILE, overlap=8, engine="plain",
                         **options).predict_tiles(images)
    return np.full(images.shape, STAND_IN[label_], np.float32)


class Clock:
    """A fake ``timer`` for the auto engine: ``seconds[label]`` per call; records the calls."""

    def __init__(self, **seconds):
        self.seconds = seconds or {"plain": 2.0, "xla": 1.0, "frozen": 1.5,
                                   "plain+mixed_bfloat16": 0.1, "xla+mixed_bfloat16": 0.2}
        self.calls = []

    def __call__(self, network, batch):
        self.calls.append(label(network))
        return self.seconds[label(network)], network(batch)

    def predictor(self, model, **options):
        """A Predictor (TILE px tiles, overlap 8) whose auto engine is timed by this clock and
        runs ``StandIn``s of the variants other than plain."""
        predictor = Predictor(model, tile_shape=options.pop("tile_shape", TILE), overlap=8,
                              **options)
        network = predictor.network
        assert isinstance(network, autotune.AutoNetwork)
        network.timer = self  # injected: nothing module-level is patched
        real = network.build
        network.build = lambda variant: real(variant) if variant.label == "plain" \
            else StandIn(variant)
        return predictor


@pytest.fixture
def fake_clock():
    return Clock()


def cache_entries():
    return json.loads(autotune.cache_path().read_text())


@pytest.mark.parametrize("fastest", ["plain", "frozen", "xla"])
def test_auto_keeps_the_fastest_records_it_and_returns_its_result(model, fake_clock, fastest):
    fake_clock.seconds = {"plain": 1.0, "frozen": 1.0, "xla": 1.0, fastest: 0.5}
    predictor = fake_clock.predictor(model)  # engine="auto" is the default
    assert predictor.variant is None  # nothing chosen before the first batch
    result = predictor.predict_tiles(tiles())
    assert predictor.variant == {"engine": fastest, "precision": "float32"}
    assert set(fake_clock.calls) == {"plain", "frozen", "xla"}  # all were timed
    (entry,) = cache_entries().values()
    assert entry["choice"] == fastest and set(entry["timings"]) == {"plain", "frozen", "xla"}
    assert entry["timings"][fastest]["batch_s"] == 0.5
    # the first batch's result is the fastest variant's, and so are the next ones
    np.testing.assert_allclose(result, output_of(fastest, model, tiles()), rtol=0, atol=1e-6)
    assert label(predictor.network.network) == fastest
    np.testing.assert_allclose(predictor.predict_tiles(tiles()), result, rtol=0, atol=1e-6)


def test_bfloat16_only_with_precision_auto_and_bf16_matrix_units(model, fake_clock, monkeypatch):
    monkeypatch.setattr(autotune, "has_bf16_matrix_units", lambda: True)  # claim AMX
    float32 = fake_clock.predictor(model)  # precision="float32" is the default
    float32.predict_tiles(tiles())
    assert float32.variant == {"engine": "xla", "precision": "float32"}
    assert not any("bfloat16" in call for call in fake_clock.calls)  # never even timed
    chosen = fake_clock.predictor(model, precision="auto")
    result = chosen.predict_tiles(tiles())
    assert chosen.variant == {"engine": "plain", "precision": "mixed_bfloat16"}
    # the first batch's result is the chosen variant's own, not float32's
    np.testing.assert_array_equal(result, output_of("plain+mixed_bfloat16", model, tiles()))
    np.testing.assert_array_equal(float32.predict_tiles(tiles()), output_of("xla", model, tiles()))
    monkeypatch.setattr(autotune, "has_bf16_matrix_units", lambda: False)  # e.g. AVX2 only
    assert [v.label for v in autotune.candidate_variants("auto", "auto")] == \
        ["plain", "frozen", "xla"]


def test_bf16_matrix_units_are_amx_or_avx512_bf16_or_a_gpu(monkeypatch):
    monkeypatch.setattr(autotune, "_gpu_names", lambda: [])
    monkeypatch.setattr(autotune, "cpu_info", lambda: ("Xeon", frozenset({"avx512f", "avx2"})))
    assert not autotune.has_bf16_matrix_units()
    monkeypatch.setattr(autotune, "cpu_info", lambda: ("EPYC", frozenset({"avx512_bf16"})))
    assert autotune.has_bf16_matrix_units()
    monkeypatch.setattr(autotune, "cpu_info", lambda: ("Xeon", frozenset({"amx_bf16"})))
    assert autotune.has_bf16_matrix_units()
    monkeypatch.setattr(autotune, "cpu_info", lambda: ("Xeon", frozenset({"avx512f"})))
    monkeypatch.setattr(autotune, "_gpu_names", lambda: ["/physical_device:GPU:0"])
    assert autotune.has_bf16_matrix_units()


def test_the_cached_choice_is_reused_without_timing(model, fake_clock):
    first = fake_clock.predictor(model)
    first.predict_tiles(tiles())
    timed = len(fake_clock.calls)
    assert timed >= 2
    fake_clock.seconds = {"plain": 0.1, "frozen": 9.0, "xla": 9.0}  # plain, if it timed
    second = fake_clock.predictor(model)
    second.predict_tiles(tiles(seed=1))
    assert len(fake_clock.calls) == timed  # not timed again
    assert second.variant == first.variant == {"engine": "xla", "precision": "float32"}
    other_shape = fake_clock.predictor(model, tile_shape=2 * TILE)  # another batch shape: timed
    other_shape.predict_tiles(np.random.default_rng(1).random((2, 64, 64)).astype(np.float32))
    assert len(fake_clock.calls) > timed and other_shape.variant["engine"] == "plain"
    assert len(cache_entries()) == 2


def test_the_cache_holds_a_choice_per_batch_size(model, fake_clock):
    variants = autotune.candidate_variants("auto", "float32")
    assert autotune.cache_key("m", (1, TILE, TILE, 1), variants) != \
        autotune.cache_key("m", (2, TILE, TILE, 1), variants)
    two = fake_clock.predictor(model, batch_size=2)
    two.predict_tiles(tiles(2))
    timed = len(fake_clock.calls)
    assert two.variant["engine"] == "xla"
    fake_clock.seconds = {"plain": 0.1, "frozen": 9.0, "xla": 9.0}
    four = fake_clock.predictor(model, batch_size=4)  # same tiles, another batch size: timed
    four.predict_tiles(tiles(4))
    assert len(fake_clock.calls) > timed and four.variant["engine"] == "plain"
    assert sorted(entry["batch"][0] for entry in cache_entries().values()) == [2, 4]


def test_the_job_size_counts_every_tta_variant(model, fake_clock):
    fake_clock.seconds = {"plain": 1.0, "frozen": 1.0, "xla": 0.5}
    # one tile, 8 TTA variants, one input per call: 8 calls of ~1 s, worth timing
    predictor = fake_clock.predictor(model, tta=8, batch_size=1)
    assert predictor.network_calls(1, TILE, TILE) == autotune.MIN_TUNE_CALLS == 8
    predictor.predict(np.zeros((TILE, TILE), np.float32))
    assert predictor.network.expected_calls == 8
    assert set(fake_clock.calls) == {"plain", "frozen", "xla"}
    assert predictor.variant["engine"] == "xla"
    fake_clock.calls.clear()
    autotune.cache_path().unlink()
    single = fake_clock.predictor(model, tta=1, batch_size=1)  # 1 call: not worth timing
    single.predict(np.zeros((TILE, TILE), np.float32))
    assert fake_clock.calls == ["plain"] and single.variant["engine"] == "plain"


def test_a_variant_that_fails_is_skipped_and_the_cache_still_hits(model, fake_clock, caplog):
    class XlaFails(Clock):
        def __call__(self, network, batch):
            if label(network) == "xla":
                raise RuntimeError("XLA compilation failed")  # e.g. an op XLA cannot compile
            return super().__call__(network, batch)

    clock = XlaFails(plain=2.0, frozen=1.5)
    first = clock.predictor(model)
    with caplog.at_level("WARNING", logger="fusionnet_tf.inference"):
        result = first.predict_tiles(tiles())
    assert first.variant == {"engine": "frozen", "precision": "float32"}
    assert "skips xla" in caplog.text and "XLA compilation failed" in caplog.text
    (entry,) = cache_entries().values()
    assert entry["skipped"] == ["xla"] and set(entry["timings"]) == {"plain", "frozen"}
    timed = len(clock.calls)
    second = clock.predictor(model)
    np.testing.assert_allclose(second.predict_tiles(tiles()), result, rtol=0, atol=1e-6)
    assert len(clock.calls) == timed and second.variant == first.variant  # from the cache


def test_the_fallback_failing_is_an_error_not_a_skip(model):
    class PlainFails(Clock):
        def __call__(self, network, batch):
            if label(network) == "plain":
                raise RuntimeError("plain is broken")
            return super().__call__(network, batch)

    with pytest.raises(RuntimeError, match="plain is broken"):
        PlainFails().predictor(model).predict_tiles(tiles())


def test_cached_choice_weighs_xla_compile_against_the_job(model):
    timings = {"plain": {"batch_s": 1.0, "setup_s": 0.1}, "xla": {"batch_s": 0.8, "setup_s": 5.0},
               "frozen": {"batch_s": 0.85, "setup_s": 12.0}}
    variants = autotune.candidate_variants("auto", "float32")
    assert autotune.choose(timings, variants).engine == "xla"  # per call
    assert autotune.choose(timings, variants, calls=10).engine == "plain"  # 10.1 < 13 < 20.5 s
    assert autotune.choose(timings, variants, calls=100).engine == "xla"  # 100.1 > 97 > 85 s
    del timings["xla"]
    variants = [v for v in variants if v.engine != "xla"]
    assert autotune.choose(timings, variants, calls=10).engine == "plain"
    assert autotune.choose(timings, variants, calls=100).engine == "frozen"  # 100.1 s > 97 s


def test_a_short_job_runs_plain_without_timing_or_caching(model, fake_clock):
    fake_clock.seconds = {"plain": 100.0, "frozen": 1.0, "xla": 1.0}
    predictor = fake_clock.predictor(model)
    predictor.predict(np.random.default_rng(0).random((40, 40)).astype(np.float32))  # 1 call
    assert predictor.variant["engine"] == "plain"
    assert fake_clock.calls == ["plain"]  # only the first batch, on the fallback
    assert not autotune.cache_path().exists()
    fake_clock.seconds = {"plain": 0.01, "frozen": 0.01, "xla": 0.001}
    fake_clock.calls.clear()
    many = fake_clock.predictor(model, batch_size=1)
    many.predict(np.zeros((10, 40, 40), np.float32))  # 40 calls, but ~0.4 s
    # 8 calls or more: frozen runs first (see the module docstring), and runs the short job
    assert fake_clock.calls == ["frozen"] and many.variant["engine"] == "frozen"
    assert not autotune.cache_path().exists()
    fake_clock.seconds = {"plain": 1.0, "frozen": 1.0, "xla": 0.5}
    long = fake_clock.predictor(model, batch_size=1)
    long.predict(np.zeros((10, 40, 40), np.float32))  # 40 calls of 1 s: worth timing
    assert long.variant["engine"] == "xla" and autotune.cache_path().exists()


def test_the_choice_is_said_in_one_line_when_progress_is_on(model, fake_clock, capsys):
    fake_clock.predictor(model, progress=True).predict_tiles(tiles())
    lines = [line for line in capsys.readouterr().err.splitlines() if "auto engine" in line]
    assert len(lines) == 1
    assert lines[0].startswith("fusionnet: auto engine chose xla (1 s/batch vs plain 2 s, "
                               "frozen 1.5 s;")
    fake_clock.predictor(model).predict_tiles(tiles())  # progress off: quiet
    assert "auto engine" not in capsys.readouterr().err


def test_resolve_engine_before_the_first_batch_and_prefer(model, fake_clock):
    predictor = fake_clock.predictor(model)
    assert predictor.resolve_engine() == {"engine": "xla", "precision": "float32"}
    kept = fake_clock.predictor(model)
    calls = len(fake_clock.calls)
    assert kept.resolve_engine(prefer={"engine": "plain", "precision": "float32"}) == \
        {"engine": "plain", "precision": "float32"}
    assert len(fake_clock.calls) == calls  # a preferred variant is not timed


def test_explicit_engines_and_other_callables_have_no_choice(model):
    plain = Predictor(model, tile_shape=TILE, overlap=8, engine="plain")
    assert plain.variant == {"engine": "plain", "precision": "float32"}
    xla = Predictor(model, tile_shape=TILE, overlap=8, engine="xla")
    assert xla.variant == {"engine": "xla", "precision": "float32"}
    other = Predictor(lambda batch: batch, tile_shape=TILE, overlap=8, precision="auto")
    assert other.variant == {"engine": "as-is", "precision": "float32"}
    other.predict_tiles(tiles())
    for predictor in (plain, xla, other):  # nothing to time
        assert not isinstance(predictor.network, autotune.AutoNetwork)


# === The frozen engine (weights as graph constants) ===

def test_frozen_is_timed_first_in_float32_only(model, fake_clock, monkeypatch):
    fake_clock.seconds = {"plain": 2.0, "frozen": 0.5, "xla": 1.0}
    wide = fake_clock.predictor(model)
    result = wide.predict_tiles(tiles())
    # frozen runs before plain shares its (unblocked) oneDNN primitives with it
    assert fake_clock.calls[0] == "frozen" and set(fake_clock.calls) == {"plain", "frozen", "xla"}
    assert wide.variant == {"engine": "frozen", "precision": "float32"}
    assert label(wide.network.network) == "frozen"
    np.testing.assert_array_equal(result, output_of("frozen", model, tiles()))
    explicit = Predictor(model, tile_shape=TILE, overlap=8, engine="frozen")  # the real one
    assert explicit.variant == {"engine": "frozen", "precision": "float32"}
    assert explicit.network.constant_weights
    monkeypatch.setattr(autotune, "has_bf16_matrix_units", lambda: True)
    assert [v.label for v in autotune.candidate_variants("auto", "auto")] == \
        ["plain", "frozen", "xla", "plain+mixed_bfloat16", "xla+mixed_bfloat16"]
    assert [v.label for v in autotune.candidate_variants("frozen", "mixed_bfloat16")] == \
        ["frozen+mixed_bfloat16"]  # explicitly, any precision


def test_frozen_pays_its_set_up_only_on_long_jobs(model, fake_clock):
    fake_clock.seconds = {"plain": 2.0, "frozen": 1.0, "xla": 3.0}
    one_slice = fake_clock.predictor(model)
    one_slice.predict(np.random.default_rng(0).random((40, 40)).astype(np.float32))  # 1 call
    assert fake_clock.calls == ["plain"] and one_slice.variant["engine"] == "plain"
    long = fake_clock.predictor(model, batch_size=1)
    long.predict(np.zeros((10, 40, 40), np.float32))  # 40 calls of 1-3 s: timed, frozen first
    assert fake_clock.calls[1] == "frozen" and long.variant["engine"] == "frozen"
    ((key, entry),) = cache_entries().items()
    entry["timings"]["plain"]["setup_s"] = 0.0
    entry["timings"]["frozen"]["setup_s"] = 20.0  # its constant folding, as at base 64
    autotune.store_entry(key, entry)
    timed = len(fake_clock.calls)
    ten = fake_clock.predictor(model, batch_size=1)
    assert ten.resolve_engine(calls=10)["engine"] == "plain"  # 20 s < 20 s + 10 s
    many = fake_clock.predictor(model, batch_size=1)
    assert many.resolve_engine(calls=40)["engine"] == "frozen"  # 80 s > 20 s + 40 s
    assert len(fake_clock.calls) == timed  # from the cache
    fake_clock.seconds = {"plain": 0.02, "frozen": 0.01, "xla": 0.001}
    fake_clock.calls.clear()
    autotune.cache_path().unlink()
    quick = fake_clock.predictor(model, batch_size=1)
    quick.predict(np.zeros((10, 40, 40), np.float32))  # 40 calls, but ~0.4 s on what ran first
    assert fake_clock.calls == ["frozen"] and quick.variant["engine"] == "frozen"
    assert not autotune.cache_path().exists()


def test_frozen_engine_from_the_command_line_and_in_volumes(tiny_model_file, tmp_path):
    zarr = pytest.importorskip("zarr")
    tifffile = pytest.importorskip("tifffile")
    from fusionnet_tf.cli import main
    from fusionnet_tf.data.normalize import normalize
    from fusionnet_tf.volumes import predict_volume, storage

    model_file = str(tiny_model_file)
    volume = (np.random.default_rng(3).random((2, 70, 90)) * 255).astype(np.uint8)
    small = ["--tile-size", str(TILE), "--overlap", "8", "--tta", "1", "--quiet"]
    image = tmp_path / "slice.tif"
    tifffile.imwrite(image, volume[0])
    out = tmp_path / "p.tif"
    assert main(["predict", str(image), "-o", str(out), "--model", model_file,
                 "--engine", "frozen"] + small) == 0
    assert json.loads(tifffile.TiffFile(out).pages[0].description)["engine"] == "frozen"
    spec = str(tmp_path / "vol.zarr")
    zarr.open_array(spec, mode="w", shape=volume.shape, chunks=(1, 64, 64),
                    dtype=volume.dtype)[:] = volume
    out = tmp_path / "out.zarr"
    assert main(["predict-volume", spec, str(out), "--model", model_file, "--engine", "frozen",
                 "--block", "64", "--workers", "0"] + small) == 0
    assert storage.recorded_settings(out)["engine"] == "frozen"
    in_memory = Predictor(keras.saving.load_model(model_file), tile_shape=TILE, overlap=8,
                          tta=1, engine="frozen").predict(normalize(volume))
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], in_memory)
    with pytest.raises(ValueError, match="engine: 'frozen' -> 'plain'"):
        predict_volume(spec, out, model_file, engine="plain", block_shape=(1, 64, 64),
                       tile_shape=TILE, overlap=8, tta=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(engine="fast"), "engine='fast'"),
    (dict(engine="plain", jit_compile=True), r"unknown prediction option\(s\) \['jit_compile'\]"),
    (dict(precision="bf16"), "precision='bf16'"),
])
def test_bad_engine_settings(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Predictor(model, tile_shape=TILE, overlap=8, **kwargs)


# === Network calls: no padding past one slice ===

def recording_network(sizes):
    def network(batch):
        sizes.append(len(batch))
        return batch * 0.5
    return network


@pytest.mark.parametrize("tta", [1, 8])
def test_a_single_tile_is_not_padded(tta):
    sizes = []
    predictor = Predictor(recording_network(sizes), tile_shape=512, overlap=64, tta=tta)
    predictor.predict(np.zeros((512, 512), np.float32))
    assert sizes == [tta]  # one tile's TTA variants, in one call
    sizes.clear()
    small = Predictor(recording_network(sizes), tile_shape=64, overlap=16, tta=tta)
    small.predict(np.zeros((64, 64), np.float32))
    assert sizes == [tta]


@pytest.mark.parametrize("tta", [1, 4, 8])
def test_the_expected_calls_are_the_calls_made(tta):
    from fusionnet_tf.volumes import runner

    sizes = []
    predictor = Predictor(recording_network(sizes), tile_shape=64, overlap=16, tta=tta)
    predictor.predict(np.zeros((3, 100, 150), np.float32))  # 3 slices of 2 x 3 tiles
    assert predictor.network_calls(3, 100, 150) == len(sizes)
    assert sum(sizes) == -(-3 * 6 * tta // sizes[0]) * sizes[0]  # only the last call padded
    options = PredictOptions(tile_shape=64, overlap=16, tta=tta)
    assert runner._call_plan(options, (3, 100, 150)) == (len(sizes), sizes[0])


def test_small_tiles_share_a_call_of_one_slice_at_most():
    sizes = []
    predictor = Predictor(recording_network(sizes), tile_shape=64, overlap=16, tta=1)
    assert predictor.inputs_per_call() == 16  # 16 x 64 x 64 = 256 x 256 pixels
    image = np.zeros((100, 150), np.float32)  # 2 x 3 tiles
    assert predictor.inputs_per_call(100, 150) == len(predictor.tile_origins(100, 150)) == 6
    predictor.predict(np.zeros((4,) + image.shape, np.float32))
    assert set(sizes) == {6} and sum(sizes) == 4 * 6
    sizes.clear()
    tta = Predictor(recording_network(sizes), tile_shape=64, overlap=16, tta=8)
    assert tta.inputs_per_call() == 16  # the variants of 2 tiles
    tta.predict(np.zeros((250, 250), np.float32))  # 25 tiles: 13 calls, the last one padded
    assert len(tta.tile_origins(250, 250)) == 25
    assert set(sizes) == {16} and len(sizes) == 13
