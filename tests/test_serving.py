"""The local TF-Serving-compatible REST server and the REST client.

The session's tiny exported model is served on a free port for the whole module.
"""

import base64
import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fusionnet_tf import build_fusionnet
from fusionnet_tf.cli import build_parser
from fusionnet_tf.export.rest_client import ServingClient, ServingError
from fusionnet_tf.export.saved_model import export_plain_saved_model
from fusionnet_tf.export.server import ModelServer
from fusionnet_tf.inference import Predictor

TILE, OVERLAP = 32, 8


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def model_dir(tiny_serving_base):
    """The session's ``.../membranes`` base (tiles of TILE, overlap OVERLAP, batch 2): read-only."""
    return tiny_serving_base


@pytest.fixture(scope="module")
def server(model_dir):
    srv = ModelServer(model_dir, port=0, max_request_bytes=4 * 1024 * 1024).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def loaded(model_dir):
    return tf.saved_model.load(str(model_dir / "1"))


def _request(server, method, path, body=None, headers=None):
    """(status, parsed JSON) of one request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def _batch(seed, shape=(2, 32, 32, 1)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_server_binds_localhost_and_names_model_after_folder(server):
    assert server.httpd.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/v1/models/membranes"


def test_status_and_metadata(server):
    status, payload = _request(server, "GET", "/v1/models/membranes")
    assert status == 200
    assert payload["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    status, payload = _request(server, "GET", "/v1/models/membranes/versions/1/metadata")
    assert status == 200 and payload["model_spec"]["version"] == "1"
    signatures = payload["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "whole_image", "whole_image_png"}
    image = signatures["serving_default"]["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "-1", "-1", "1"]
    assert signatures["whole_image"]["inputs"]["image"]["dtype"] == "DT_UINT8"
    assert signatures["whole_image_png"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert "membrane_probability" in signatures["serving_default"]["outputs"]


def test_row_format_round_trip(server, model):
    x = _batch(0)
    status, payload = _request(server, "POST", "/v1/models/membranes:predict",
                               {"instances": x.tolist()})
    assert status == 200
    np.testing.assert_allclose(np.array(payload["predictions"], np.float32),
                               model(x, training=False).numpy(), atol=1e-5)
    named = {"instances": [{"image": tile.tolist()} for tile in x]}
    status, payload = _request(server, "POST", "/v1/models/membranes/versions/1:predict", named)
    assert status == 200
    np.testing.assert_allclose(np.array(payload["predictions"], np.float32),
                               model(x, training=False).numpy(), atol=1e-5)


def test_columnar_format_round_trip(server, model):
    x = _batch(1, (1, 32, 64, 1))
    status, payload = _request(server, "POST", "/v1/models/membranes:predict",
                               {"signature_name": "serving_default",
                                "inputs": {"image": x.tolist()}})
    assert status == 200
    np.testing.assert_allclose(np.array(payload["outputs"], np.float32),
                               model(x, training=False).numpy(), atol=1e-5)


def test_b64_png_whole_image_request(server, loaded):
    raw = (np.random.default_rng(2).random((45, 38)) * 255).astype(np.uint8)
    png = tf.io.encode_png(raw[..., None]).numpy()
    body = {"signature_name": "whole_image_png",
            "instances": [{"b64": base64.b64encode(png).decode()}]}
    status, payload = _request(server, "POST", "/v1/models/membranes:predict", body)
    assert status == 200
    expected = loaded.signatures["whole_image"](image=tf.constant(raw[None]))
    np.testing.assert_allclose(np.array(payload["predictions"], np.float32),
                               expected["membrane_probability"].numpy(), atol=1e-6)
    client_result = ServingClient(server.url).predict_whole_image(png)
    np.testing.assert_allclose(client_result, expected["membrane_probability"].numpy(), atol=1e-6)


def test_uint8_array_whole_image_request(server, loaded):
    raw = (np.random.default_rng(3).random((1, 20, 50)) * 255).astype(np.uint8)
    status, payload = _request(server, "POST", "/v1/models/membranes:predict",
                               {"signature_name": "whole_image", "inputs": raw.tolist()})
    assert status == 200
    expected = loaded.signatures["whole_image"](image=tf.constant(raw))["membrane_probability"]
    np.testing.assert_allclose(np.array(payload["outputs"]), expected.numpy(), atol=1e-6)


def test_concurrent_clients(server, model):
    client = ServingClient(server.url)
    batches = [_batch(100 + i, (1, 32, 32, 1)) for i in range(8)]
    expected = [model(b, training=False).numpy() for b in batches]

    def worker(i):
        return [np.abs(client(batches[i]) - expected[i]).max() for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        errors = [e for result in pool.map(worker, range(8)) for e in result]
    assert len(errors) == 80 and max(errors) < 1e-5


def test_predictor_with_serving_client_matches_local(server, model):
    image = np.random.default_rng(4).random((50, 70), dtype=np.float32)
    remote = Predictor(ServingClient(server.url), tile_shape=TILE, overlap=OVERLAP, align=4,
                       batch_size=3, tta=1).predict(image)
    local = Predictor(model, tile_shape=TILE, overlap=OVERLAP, batch_size=3, tta=1,
                      fold_batchnorm=False).predict(image)
    np.testing.assert_allclose(remote, local, atol=1e-5)


GOOD = [[[[0.5]] * 32] * 32]
MALFORMED = [
    ("POST", "/v1/models/membranes:predict", "{not json", 400, "malformed JSON"),
    ("POST", "/v1/models/membranes:predict", [1, 2], 400, "JSON object"),
    ("POST", "/v1/models/membranes:predict", {"instances": GOOD, "inputs": GOOD}, 400,
     "exactly one"),
    ("POST", "/v1/models/membranes:predict", {"instances": []}, 400, "non-empty"),
    ("POST", "/v1/models/membranes:predict", {"inputs": [[0.5] * 32] * 32}, 400, "shape"),
    ("POST", "/v1/models/membranes:predict", {"inputs": [[[[0.5]] * 32] * 30]}, 400,
     "multiples of 2\\*\\*depth"),
    ("POST", "/v1/models/membranes:predict", {"inputs": [[["a"] * 32] * 32]}, 400, "DT_FLOAT"),
    ("POST", "/v1/models/membranes:predict", {"inputs": [[[[0.5]] * 32] * 31 + [[[0.5]] * 3]]},
     400, "rectangular"),
    ("POST", "/v1/models/membranes:predict", {"inputs": [{"b64": "AAAA"}]}, 400, "DT_FLOAT"),
    ("POST", "/v1/models/membranes:predict",
     {"signature_name": "whole_image", "inputs": [[[300] * 8] * 8]}, 400, "DT_UINT8"),
    ("POST", "/v1/models/membranes:predict",
     {"signature_name": "whole_image_png", "inputs": [{"b64": "bm90IGEgcG5n"}]}, 400, "image"),
    ("POST", "/v1/models/membranes:predict", {"signature_name": "nope", "inputs": GOOD}, 400,
     "signature name"),
    ("POST", "/v1/models/other:predict", {"inputs": GOOD}, 404, "Servable not found"),
    ("POST", "/v1/models/membranes/versions/7:predict", {"inputs": GOOD}, 404,
     "Servable not found"),
    ("GET", "/v1/models/membranes/versions/7", None, 404, "Servable not found"),
    ("GET", "/v2/whatever", None, 404, "unknown path"),
    ("POST", "/v1/models/membranes:predict", {"inputs": [[[[0.5]] * 800] * 800]}, 413, "exceeds"),
]


@pytest.mark.parametrize("method,path,body,status,message", MALFORMED,
                         ids=[f"{m[3]}-{m[4]}" for m in MALFORMED])
def test_malformed_requests_get_4xx_and_server_keeps_serving(server, method, path, body,
                                                             status, message):
    got, payload = _request(server, method, path, body)
    assert got == status
    assert set(payload) == {"error"} and re.search(message, payload["error"])
    assert _request(server, "GET", "/v1/models/membranes")[0] == 200


UINT8_8X8 = [[[7] * 8] * 8]
MORE_MALFORMED = [
    ("GET", "/v1/models/membranes:predict", None, 405, ":predict needs POST"),
    ("POST", "/v1/models/membranes:classify", {"inputs": GOOD}, 400, "only :predict"),
    ("POST", "/v1/models/membranes:regress", {"inputs": GOOD}, 400, "only :predict"),
    ("POST", "/v1/models/membranes:predict",
     {"signature_name": "whole_image", "inputs": [[[1.5] * 8] * 8]}, 400, "DT_UINT8 integers"),
    ("POST", "/v1/models/membranes:predict",
     {"signature_name": "whole_image", "inputs": [[[-1] * 8] * 8]}, 400, "DT_UINT8 integers"),
    ("POST", "/v1/models/membranes:predict",
     {"signature_name": "whole_image_png", "inputs": [{"b64": "not base64!"}]}, 400,
     "invalid base64"),
    ("POST", "/v1/models/membranes:predict", {"inputs": {"images": GOOD}}, 400,
     r"takes inputs \['image'\]; received \['images'\]"),
    ("POST", "/v1/models/membranes:predict", {"instances": [{"img": GOOD[0]}]}, 400,
     r"takes inputs \['image'\]; received \['img'\]"),
]


@pytest.mark.parametrize("method,path,body,status,message", MORE_MALFORMED,
                         ids=[f"{m[3]}-{m[1].split(':')[-1]}-{m[4][:12]}" for m in MORE_MALFORMED])
def test_wrong_method_action_values_and_names_get_4xx(server, method, path, body, status,
                                                      message):
    got, payload = _request(server, method, path, body)
    assert (got, set(payload)) == (status, {"error"})
    assert re.search(message, payload["error"]), payload["error"]
    assert _request(server, "GET", "/v1/models/membranes")[0] == 200


def test_uint8_whole_image_accepts_integral_floats(server, loaded):
    """1.0 is a valid uint8 value in JSON (only fractional or out-of-range values are not)."""
    got, payload = _request(server, "POST", "/v1/models/membranes:predict",
                            {"signature_name": "whole_image", "inputs": [[[7.0] * 8] * 8]})
    expected = loaded.signatures["whole_image"](image=tf.constant(UINT8_8X8, tf.uint8))
    assert got == 200
    np.testing.assert_allclose(payload["outputs"], expected["membrane_probability"].numpy(),
                               atol=1e-6)


def test_post_without_content_length_gets_411(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/v1/models/membranes:predict")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()  # no Content-Length, no body
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    assert response.status == 411 and "Content-Length" in payload["error"]
    assert _request(server, "GET", "/v1/models/membranes")[0] == 200


class TwoInputs(tf.Module):
    """A SavedModel signature with two named inputs that must share their batch size."""

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"),
                                  tf.TensorSpec([None, 3], tf.float32, name="b")])
    def serve(self, a, b):
        return {"both": tf.concat([a, b], axis=1)}


@pytest.fixture(scope="module")
def two_input_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("two") / "pair"
    module = TwoInputs()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    srv = ModelServer(base, port=0).start()
    yield srv
    srv.shutdown()


def test_named_inputs_in_row_and_columnar_format(two_input_server):
    path = "/v1/models/pair:predict"
    rows = {"instances": [{"a": [1, 2], "b": [3, 4, 5]}, {"a": [6, 7], "b": [8, 9, 10]}]}
    assert _request(two_input_server, "POST", path, rows) == (
        200, {"predictions": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]})
    columns = {"inputs": {"a": [[1, 2]], "b": [[3, 4, 5]]}}
    assert _request(two_input_server, "POST", path, columns) == (200, {"outputs": [[1, 2, 3, 4, 5]]})


@pytest.mark.parametrize("body,message", [
    # columnar format: TF Serving leaves batch sizes to the signature, whose error is a 400
    ({"inputs": {"a": [[1, 2], [3, 4]], "b": [[5, 6, 7]]}}, "Dimension 0 in both shapes"),
    ({"inputs": {"a": [[1, 2]]}}, r"takes inputs \['a', 'b'\]; received \['a'\]"),
    ({"inputs": {"a": [[1, 2]], "b": [[3, 4, 5]], "c": [[0]]}}, "received \\['a', 'b', 'c'\\]"),
    ({"inputs": [[1, 2]]}, "several inputs"),
    ({"instances": [{"a": [1, 2], "b": [3, 4, 5]}, {"a": [6, 7]}]}, "received \\['a'\\]"),
    ({"instances": [{"a": [1, 2], "b": [3, 4, 5]}, {"a": [6, 7], "b": [8, 9]}]}, "rectangular"),
])
def test_two_input_signature_rejects_mismatched_inputs(two_input_server, body, message):
    got, payload = _request(two_input_server, "POST", "/v1/models/pair:predict", body)
    assert (got, set(payload)) == (400, {"error"})
    assert re.search(message, payload["error"]), payload["error"]


def test_internal_error_is_a_json_500_and_server_keeps_serving(server, monkeypatch):
    from fusionnet_tf.export import server as server_module

    def broken(outputs, row_format):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server_module, "format_outputs", broken)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/models/membranes:predict", body=json.dumps({"inputs": GOOD}))
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 500
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"error": "internal error: disk on fire"}
    monkeypatch.undo()
    assert _request(server, "POST", "/v1/models/membranes:predict", {"inputs": GOOD})[0] == 200


def test_versions_are_served_explicitly_and_latest_by_default(model, model_dir, tmp_path):
    import shutil

    model_dir = Path(shutil.copytree(model_dir, tmp_path / "membranes"))  # the shared one stays
    other = build_fusionnet(base_filters=4, depth=2)  # different random weights
    export_plain_saved_model(other, model_dir / "2")  # only serving_default: tells them apart
    srv = ModelServer(model_dir, model_name="m2", port=0).start()
    try:
        status, payload = _request(srv, "GET", "/v1/models/m2")
        assert [v["version"] for v in payload["model_version_status"]] == ["2", "1"]
        status, payload = _request(srv, "GET", "/v1/models/m2/metadata")
        assert payload["model_spec"]["version"] == "2"
        assert set(payload["metadata"]["signature_def"]["signature_def"]) == {"serving_default"}
        x = _batch(5, (1, 32, 32, 1))
        latest = ServingClient(srv.url)(x)
        np.testing.assert_allclose(latest, other(x, training=False).numpy(), atol=1e-5)
        old = ServingClient(srv.url + "/versions/1")(x)
        np.testing.assert_allclose(old, model(x, training=False).numpy(), atol=1e-5)
    finally:
        srv.shutdown()


def test_client_errors(server):
    with pytest.raises(ValueError, match="url"):
        ServingClient("http://localhost:8501/models/x")
    with pytest.raises(ServingError, match="HTTP 404"):
        ServingClient(server.url.replace("membranes", "missing"))(_batch(6, (1, 32, 32, 1)))
    with pytest.raises(ServingError, match="multiples"):
        ServingClient(server.url)(_batch(6, (1, 30, 32, 1)))
    with pytest.raises(ValueError, match="batch"):
        ServingClient(server.url)(np.zeros((32, 32)))
    with pytest.raises(ServingError, match="cannot reach"):
        ServingClient("http://127.0.0.1:9/v1/models/x", timeout=5)(_batch(6, (1, 32, 32, 1)))


def test_model_server_rejects_bad_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ModelServer(tmp_path / "missing", port=0)
    with pytest.raises(FileNotFoundError, match="no integer version"):
        ModelServer(tmp_path, port=0)


def test_cli_serve_defaults():
    args = build_parser().parse_args(["serve", "--model-base", "models/fusionnet"])
    assert (args.host, args.port, args.model_name) == ("127.0.0.1", 8501, None)


@pytest.mark.large
def test_cli_serve_subprocess(model_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [sys.executable, "-m", "fusionnet_tf", "serve", "--model-base", str(model_dir),
         "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for line in process.stderr:
            found = re.search(r"(http://\S+/v1/models/membranes)", line)
            if found:
                url = found.group(1)
                break
        assert url, "the server did not print its URL"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        process.stderr.close()
    assert code == 0
