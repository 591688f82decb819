"""Shared pytest fixtures: quiet TensorFlow, reset Keras state between tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every Keras process the tests start (training workers, Dask workers) runs on TensorFlow,
# whatever a library imported in this process may set (bioimageio.core defaults to torch).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy and a fresh name scope."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")
    keras.backend.clear_session()
