"""The test kinds of tests/conftest.py: every test file has one, and the unit check works."""

from pathlib import Path

import conftest
import keras

TESTS = Path(__file__).parent


def test_every_test_file_has_a_kind_and_no_kind_is_stale():
    files = {path.name for path in TESTS.glob("test_*.py")}
    assert files - set(conftest.TEST_KINDS) == set(), "add these to conftest.TEST_KINDS"
    assert set(conftest.TEST_KINDS) - files == set(), "remove these from conftest.TEST_KINDS"
    assert set(conftest.TEST_KINDS.values()) <= set(conftest.KINDS)


def test_the_kinds_are_registered_markers(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert set(conftest.KINDS) <= registered


def test_building_a_layer_is_seen(request):
    """What ``_reset_keras_state`` checks after a unit test: layers named since the last reset."""
    assert conftest.keras_layers_named() == {}
    keras.layers.Dense(2)
    assert conftest.keras_layers_named() == {"dense": 1}
    keras.optimizers.AdamW()  # an optimizer is no model
    assert conftest.keras_layers_named() == {"dense": 1}
    keras.Sequential([keras.layers.Dense(2, name="explicit")])(keras.Input((3,)))
    assert {"dense", "sequential", "input_layer"} <= set(conftest.keras_layers_named())
    keras.backend.clear_session()  # so this unit test passes the check it tests
    assert conftest.keras_layers_named() == {}


def test_every_listed_dask_cluster_test_exists():
    for name in conftest.DASK_CLUSTER_TESTS:
        file, function = name.split("::")
        assert f"def {function}(" in (TESTS / file).read_text(), name


def test_work_units_of_the_xdist_scheduler():
    assert conftest.xdist_scope("tests/test_volumes.py::test_cli_scheduler_two_workers_then_resume"
                                ) == "dask"
    assert conftest.xdist_scope("tests/test_volumes.py::test_block_grid_covers_volume_exactly"
                                ) == "tests/test_volumes.py"
    assert conftest.xdist_scope("tests/test_io_spec.py::test_x[a::b]") == "tests/test_io_spec.py"
