"""Shared pytest fixtures: quiet TensorFlow, reset Keras state between tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every Keras process the tests start (training workers, Dask workers) runs on TensorFlow,
# whatever a library imported in this process may set (bioimageio.core defaults to torch).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_autotune_cache(tmp_path, monkeypatch):
    """The auto engine's choices go to the test's folder, never the user's ~/.cache."""
    monkeypatch.setenv("FUSIONNET_TF_CACHE_DIR", str(tmp_path / "autotune-cache"))


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy and a fresh name scope."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")
    keras.backend.clear_session()
