"""A local server that speaks the TF Serving REST API for exported SavedModels.

For users without Docker: ``fusionnet serve --model-base DIR/<name>`` answers
the calls clients use, with TF Serving's URLs and JSON bodies:

- ``GET  /v1/models/<name>[/versions/<v>]``: version status;
- ``GET  /v1/models/<name>[/versions/<v>]/metadata``: signature metadata;
- ``POST /v1/models/<name>[/versions/<v>]:predict``: row format
  (``{"instances": [...]}`` -> ``{"predictions": [...]}``) or columnar format
  (``{"inputs": ...}`` -> ``{"outputs": ...}``), optional ``signature_name``
  (default ``serving_default``), binary string inputs as ``{"b64": "..."}``.

Like ``tensorflow_model_server --model_base_path``, the base folder holds
integer version subfolders; requests without a version go to the highest one,
other versions are loaded on their first explicit request. Bad requests
(malformed JSON, unknown signature, wrong dtype or shape, unknown model or
version, too large) get a 4xx status with a ``{"error": "..."}`` body and the
server keeps serving. It binds 127.0.0.1 by default.
"""

import base64
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<action>/metadata|:predict|:classify|:regress)?/?$")
_DTYPE_NAMES = {"float32": "DT_FLOAT", "uint8": "DT_UINT8", "string": "DT_STRING",
                "int32": "DT_INT32", "int64": "DT_INT64", "float64": "DT_DOUBLE"}


class RequestError(Exception):
    """A client error: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# === Model versions ===
class Signature:
    """One signature of a loaded SavedModel: its function and tensor specs."""

    def __init__(self, name, function):
        self.name = name
        self.function = function
        self.inputs = dict(function.structured_input_signature[1])
        self.outputs = {key: value for key, value in function.structured_outputs.items()}

    def metadata(self):
        """TF Serving's SignatureDef JSON for this signature."""
        def tensor_info(name, spec, prefix):
            dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
            return {"dtype": _DTYPE_NAMES.get(spec.dtype.name, spec.dtype.name.upper()),
                    "tensor_shape": {"dim": dims, "unknown_rank": False},
                    "name": f"{prefix}{name}:0"}

        return {
            "inputs": {k: tensor_info(k, s, f"{self.name}_") for k, s in self.inputs.items()},
            "outputs": {k: tensor_info(k, s, "StatefulPartitionedCall:") for k, s in
                        self.outputs.items()},
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }


class ModelVersion:
    """A loaded SavedModel version: ``signatures`` maps name -> ``Signature``."""

    def __init__(self, path):
        import tensorflow as tf

        self.path = Path(path)
        self.loaded = tf.saved_model.load(str(path))
        self.signatures = {name: Signature(name, fn) for name, fn in self.loaded.signatures.items()}


class ModelRepository:
    """Integer versions under a model base folder, loaded on first use.

    Args:
        model_base: str or Path, the ``--model_base_path`` folder holding
            ``1/``, ``2/``, ... SavedModel folders.
        name: str or None. Served model name; defaults to the folder's name.

    Raises:
        FileNotFoundError: if the folder does not exist or holds no version.
    """

    def __init__(self, model_base, name=None):
        self.base = Path(model_base)
        if not self.base.is_dir():
            raise FileNotFoundError(f"model base folder not found: {self.base}")
        self.name = name or self.base.resolve().name
        self.versions = self._scan()
        if not self.versions:
            raise FileNotFoundError(
                f"no integer version folders with a saved_model.pb in {self.base}; "
                "export with 'fusionnet export --format saved_model --output BASE'")
        self._loaded = {}
        self._lock = threading.Lock()
        self.get(self.latest)

    def _scan(self):
        return sorted(int(p.name) for p in self.base.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file())

    @property
    def latest(self):
        return self.versions[-1]

    def resolve_version(self, version):
        """``version`` (str or None) -> an existing int version, else RequestError 404."""
        if version is None:
            return self.latest
        if not version.isdigit() or int(version) not in self.versions:
            raise RequestError(f"Servable not found for request: Specific({self.name}, {version})",
                               HTTPStatus.NOT_FOUND)
        return int(version)

    def get(self, version):
        """The loaded ``ModelVersion`` for an int version (loads it once)."""
        with self._lock:
            if version not in self._loaded:
                self._loaded[version] = ModelVersion(self.base / str(version))
            return self._loaded[version]


# === Request decoding ===
def _decode_b64(value):
    """Replace TF Serving's ``{"b64": "..."}`` objects by bytes, recursively."""
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as exc:
                raise RequestError(f"invalid base64 in {{\"b64\": ...}}: {exc}") from None
        raise RequestError(f"unexpected JSON object in tensor values: keys {sorted(value)}")
    if isinstance(value, list):
        return [_decode_b64(item) for item in value]
    return value


def _contains_bytes(value):
    if isinstance(value, list):
        return any(_contains_bytes(item) for item in value)
    return isinstance(value, bytes)


def to_array(name, value, spec):
    """JSON value -> NumPy array of ``spec``'s dtype and shape, else RequestError."""
    value = _decode_b64(value)
    dtype = spec.dtype.name
    expected = _DTYPE_NAMES.get(dtype, dtype)
    try:
        if dtype == "string":
            array = np.array(value, dtype=object)
            if not all(isinstance(v, (bytes, str)) for v in array.ravel()):
                raise RequestError(f"input '{name}' expects {expected} (strings or "
                                   "{\"b64\": ...}); received non-string values")
        else:
            if _contains_bytes(value):
                raise RequestError(f"input '{name}' expects {expected}; received b64 bytes")
            array = np.array(value)
    except ValueError as exc:
        raise RequestError(f"input '{name}' is not a rectangular array: {exc}") from None
    if dtype != "string":
        array = _cast_numeric(name, array, dtype, expected)
    _check_shape(name, array, spec)
    return array


def _cast_numeric(name, array, dtype, expected):
    if array.dtype.kind not in "iuf" or array.dtype == bool:
        raise RequestError(f"input '{name}' expects {expected} numbers; received JSON values of "
                           f"type {array.dtype.name if array.dtype.kind != 'U' else 'string'}")
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (not np.all(np.floor(array) == array) or array.min() < info.min
                           or array.max() > info.max):
            raise RequestError(f"input '{name}' expects {expected} integers in "
                               f"[{info.min}, {info.max}]")
    return array.astype(dtype)


def _check_shape(name, array, spec):
    wanted = spec.shape.as_list()
    if array.ndim != len(wanted) or any(w is not None and w != a
                                        for w, a in zip(wanted, array.shape)):
        shown = [-1 if w is None else w for w in wanted]
        raise RequestError(f"input '{name}' must have shape {shown}; received shape "
                           f"{list(array.shape)}")


def _named_inputs(value, signature):
    """A single-input value or a {name: value} dict -> {name: value}."""
    names = sorted(signature.inputs)  # a SavedModel stores them in no fixed order
    if isinstance(value, dict) and set(value) != {"b64"}:
        unknown = set(value) - set(names)
        missing = set(names) - set(value)
        if unknown or missing:
            raise RequestError(f"signature '{signature.name}' takes inputs {names}; received "
                               f"{sorted(value)}")
        return value
    if len(names) != 1:
        raise RequestError(f"signature '{signature.name}' takes several inputs {names}; "
                           "name them in a JSON object")
    return {names[0]: value}


def parse_predict_body(body, version):
    """Parse a :predict JSON body -> (signature, {name: ndarray}, row_format)."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON request body: {exc}") from None
    if not isinstance(request, dict):
        raise RequestError("request body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in request) == ("inputs" in request):
        raise RequestError("request must have exactly one of 'instances' (row format) or "
                           "'inputs' (columnar format)")
    signature_name = request.get("signature_name") or "serving_default"
    if signature_name not in version.signatures:
        raise RequestError(f"Serving signature name: \"{signature_name}\" not found in signature "
                           f"def; available: {sorted(version.signatures)}")
    signature = version.signatures[signature_name]
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError("'instances' must be a non-empty JSON list")
        rows = [_named_inputs(instance, signature) for instance in instances]
        columns = {name: [row[name] for row in rows] for name in signature.inputs}
    else:
        columns = _named_inputs(request["inputs"], signature)
    arrays = {name: to_array(name, value, signature.inputs[name])
              for name, value in columns.items()}
    if "instances" in request:
        batch = {len(a) for a in arrays.values()}
        if len(batch) != 1:
            raise RequestError("all named inputs must have the same batch size")
    return signature, arrays, "instances" in request


def run_signature(signature, arrays):
    """Call the signature; TF argument errors become RequestError 400."""
    import tensorflow as tf

    tensors = {name: tf.constant(array, dtype=signature.inputs[name].dtype)
               for name, array in arrays.items()}
    try:
        outputs = signature.function(**tensors)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
        raise RequestError(tf_error_text(getattr(exc, "message", str(exc)))) from None
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def tf_error_text(message):
    """The informative line of a TF graph-execution error (assertion text if any)."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[", "(most recent")
    lines = [line.strip() for line in message.strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith(noise)] or lines[:1]
    text = lines[0]
    assertion = re.match(r"assertion failed: \[(.*?)\]", text)
    return assertion.group(1) if assertion else text


def _jsonable(array):
    if array.dtype == object:
        return [{"b64": base64.b64encode(v).decode()} for v in array.ravel()]
    return array.tolist()


def format_outputs(outputs, row_format):
    """Outputs dict -> TF Serving's {"predictions": ...} or {"outputs": ...}."""
    if row_format:
        if len(outputs) == 1:
            return {"predictions": _jsonable(next(iter(outputs.values())))}
        count = len(next(iter(outputs.values())))
        return {"predictions": [{k: _jsonable(v[i:i + 1])[0] for k, v in outputs.items()}
                                for i in range(count)]}
    if len(outputs) == 1:
        return {"outputs": _jsonable(next(iter(outputs.values())))}
    return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}


# === HTTP ===
class _Handler(BaseHTTPRequestHandler):
    server_version = "fusionnet-serve"
    protocol_version = "HTTP/1.1"
    timeout = 120

    def log_message(self, fmt, *args):
        if self.server.log_requests:
            super().log_message(fmt, *args)

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self):
        match = _PATH.match(self.path.split("?")[0])
        if not match:
            raise RequestError(f"unknown path {self.path}; expected /v1/models/<name>[...]",
                               HTTPStatus.NOT_FOUND)
        repository = self.server.repository
        if match["name"] != repository.name:
            raise RequestError(f"Servable not found for request: Latest({match['name']})",
                               HTTPStatus.NOT_FOUND)
        return match["action"], match["version"], repository

    def do_GET(self):
        self._handle(self._get)

    def do_POST(self):
        self._handle(self._post)

    def _handle(self, method):
        try:
            status, payload = method()
        except RequestError as exc:
            status, payload = exc.status, {"error": str(exc)}
        except Exception as exc:  # keep serving whatever happens in one request
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc}"}
        self._send(status, payload)

    def _get(self):
        action, version, repository = self._route()
        if action is None:
            versions = ([repository.resolve_version(version)] if version is not None
                        else repository.versions[::-1])
            return HTTPStatus.OK, {"model_version_status": [
                {"version": str(v), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}} for v in versions]}
        if action == "/metadata":
            number = repository.resolve_version(version)
            loaded = repository.get(number)
            return HTTPStatus.OK, {
                "model_spec": {"name": repository.name, "signature_name": "",
                               "version": str(number)},
                "metadata": {"signature_def": {
                    "signature_def": {k: s.metadata() for k, s in loaded.signatures.items()},
                    "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap"}}}
        raise RequestError(f"{action} needs POST", HTTPStatus.METHOD_NOT_ALLOWED)

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
        length = int(length)
        if length > self.server.max_request_bytes:
            self._discard(length)
            raise RequestError(f"request body of {length} bytes exceeds the limit of "
                               f"{self.server.max_request_bytes} bytes (--max-request-mb)",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return self.rfile.read(length)

    def _discard(self, length, chunk=1 << 20):
        """Read and drop a too-large body in chunks, so the client gets the 413."""
        self.close_connection = True
        while length > 0:
            data = self.rfile.read(min(chunk, length))
            if not data:
                break
            length -= len(data)

    def _post(self):
        body = self._read_body()
        action, version, repository = self._route()
        if action != ":predict":
            raise RequestError(f"only :predict is supported by POST; received {action or 'none'}",
                               HTTPStatus.NOT_FOUND if action is None else HTTPStatus.BAD_REQUEST)
        number = repository.resolve_version(version)
        signature, arrays, row_format = parse_predict_body(body, repository.get(number))
        return HTTPStatus.OK, format_outputs(run_signature(signature, arrays), row_format)


class ModelServer:
    """TF-Serving-compatible REST server for one model base folder.

    Args:
        model_base: str or Path holding integer SavedModel version folders.
        model_name: str or None; defaults to the folder's name.
        host: str. Interface to bind. Defaults to ``"127.0.0.1"`` (local only).
        port: int. Defaults to 8501 (TF Serving's REST port); 0 picks a free one.
        max_request_bytes: int. Larger requests get HTTP 413. Defaults to 256 MiB.
        log_requests: bool. Print one access-log line per request to stderr.

    Raises:
        FileNotFoundError: no model base or no version in it.

    Example:
    >>> server = ModelServer("models/fusionnet", port=0).start()
    >>> server.url
    'http://127.0.0.1:40123/v1/models/fusionnet'
    >>> server.shutdown()
    """

    def __init__(self, model_base, model_name=None, host="127.0.0.1", port=8501,
                 max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, log_requests=False):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"`port` must be an integer in 0..65535; received port={port!r}")
        if max_request_bytes < 1:
            raise ValueError("`max_request_bytes` must be >= 1; received "
                             f"max_request_bytes={max_request_bytes!r}")
        self.repository = ModelRepository(model_base, model_name)
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.repository = self.repository
        self.httpd.max_request_bytes = int(max_request_bytes)
        self.httpd.log_requests = log_requests
        self._thread = None

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def url(self):
        """Model URL ``http://HOST:PORT/v1/models/NAME`` (the client's --serving-url)."""
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}/v1/models/{self.repository.name}"

    def start(self):
        """Serve in a background daemon thread; returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="fusionnet-serve")
        self._thread.start()
        return self

    def serve_forever(self):
        """Serve in the calling thread until ``shutdown`` or KeyboardInterrupt."""
        self.httpd.serve_forever()

    def shutdown(self):
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
