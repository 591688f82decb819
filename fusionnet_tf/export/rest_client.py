"""Client for a TF Serving REST endpoint (official image or ``fusionnet serve``).

``ServingClient(url)`` is a callable on float32 (B, T, T, 1) batches, so it
plugs into ``fusionnet_tf.inference.Predictor`` in place of a Keras model:
the Predictor tiles, the server runs the network on each batch of tiles, and
the Predictor blends exactly as for local inference. Only the standard
library is used (``urllib``), so the client needs neither TensorFlow nor
``requests``. A 3D affinity model exported by ``fusionnet export`` (5D
``serving_default``) works the same way: the client sends (B, Z, Y, X, 1)
tiles, gets (B, Z, Y, X, C) affinities, and reports ``spatial_dims`` 3 (read
once from the signature metadata), so the Predictor tiles volumes.
"""

import base64
import json
import re
import urllib.error
import urllib.request

import numpy as np

_URL = re.compile(r"^https?://[^/]+/v1/models/[^/:]+(/versions/\d+)?/?$")


class ServingError(RuntimeError):
    """The server answered with an error, or could not be reached."""


class ServingClient:
    """Send float32 tile batches to ``<url>:predict`` and return the probabilities.

    Args:
        url: str, ``http://HOST:PORT/v1/models/NAME`` optionally followed by
            ``/versions/N``.
        signature_name: str. Defaults to ``"serving_default"`` (float32
            (B, H, W, 1) in [0, 1] -> membrane probability).
        timeout: float. Seconds per request. Defaults to 300.

    Raises:
        ValueError: if ``url`` is not of that form.

    Example:
    >>> client = ServingClient("http://127.0.0.1:8501/v1/models/fusionnet")
    >>> probability = client(np.zeros((4, 512, 512, 1), "float32"))  # (4, 512, 512, 1)
    >>> Predictor(client, tile_shape=512).predict(image)             # whole image
    """

    def __init__(self, url, signature_name="serving_default", timeout=300.0):
        if not isinstance(url, str) or not _URL.match(url):
            raise ValueError("`url` must look like http://HOST:PORT/v1/models/NAME[/versions/N]; "
                             f"received url={url!r}")
        self.url = url.rstrip("/")
        self.signature_name = signature_name
        self.timeout = timeout

    def _request(self, url, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ServingError(f"{url} answered HTTP {exc.code}: {_error_text(exc)}") from None
        except urllib.error.URLError as exc:
            raise ServingError(f"cannot reach {url}: {exc.reason}") from None

    def status(self):
        """The ``GET <url>`` version-status JSON."""
        return self._request(self.url)

    def metadata(self):
        """The ``GET <url>/metadata`` signature JSON."""
        return self._request(self.url + "/metadata")

    def predict(self, inputs, signature_name=None):
        """Columnar :predict call; returns the ``outputs`` JSON value or dict."""
        payload = {"signature_name": signature_name or self.signature_name, "inputs": inputs}
        return self._request(self.url + ":predict", payload)["outputs"]

    @property
    def spatial_dims(self):
        """3 if the signature's input is 5D (B, Z, Y, X, 1), else 2 (also if the server is down)."""
        if getattr(self, "_spatial_dims", None) is None:
            try:
                signatures = self.metadata()["metadata"]["signature_def"]["signature_def"]
                inputs = signatures[self.signature_name]["inputs"]
                dims = next(iter(inputs.values()))["tensor_shape"]["dim"]
                self._spatial_dims = 3 if len(dims) == 5 else 2
            except (ServingError, KeyError, TypeError, StopIteration):
                return 2  # the first predict call reports what is wrong
        return self._spatial_dims

    def __call__(self, batch):
        """(B, H, W, 1) float32 in [0, 1] -> (B, H, W, 1) float32 membrane probability.

        A 3D model: (B, Z, Y, X, 1) float32 -> (B, Z, Y, X, C) float32 affinities.
        """
        batch = np.asarray(batch, np.float32)
        if batch.ndim not in (4, 5) or batch.shape[-1] != 1:
            raise ValueError(f"batch must be (B, H, W, 1) or (B, Z, Y, X, 1) float32; received "
                             f"shape {batch.shape}")
        outputs = self.predict(batch.tolist())
        if isinstance(outputs, dict):
            outputs = outputs.get("membrane_probability", next(iter(outputs.values())))
        result = np.asarray(outputs, np.float32)
        same = (result.shape[:-1] == batch.shape[:-1] if batch.ndim == 5 else
                result.shape == batch.shape)
        if not same:
            raise ServingError(f"{self.url} returned shape {result.shape} for a batch of "
                               f"shape {batch.shape}")
        return result

    def predict_whole_image(self, png_bytes):
        """Send encoded 8-bit grayscale PNGs to the ``whole_image_png`` signature.

        Args:
            png_bytes: bytes of one PNG, or a list of them (same image size).

        Returns:
            (N, H, W) float32 membrane probability.
        """
        if isinstance(png_bytes, (bytes, bytearray)):
            png_bytes = [png_bytes]
        inputs = [{"b64": base64.b64encode(data).decode("ascii")} for data in png_bytes]
        return np.asarray(self.predict(inputs, "whole_image_png"), np.float32)


def _error_text(exc):
    try:
        return json.loads(exc.read()).get("error", "")
    except (ValueError, AttributeError):
        return exc.reason
