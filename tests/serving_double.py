"""A loopback stand-in for TensorFlow Serving, for tests only (there is no ``tensorflow_model_server`` here).

It serves SavedModels loaded with ``tf.saved_model.load`` and follows TF Serving's documented rules
(https://www.tensorflow.org/tfx/serving/api_rest and ``prediction_service.proto``):

REST (``http.server`` on 127.0.0.1, a free port)
    ``POST /v1/models/NAME[/versions/N]:predict`` with ``{"signature_name"?, "instances" | "inputs"}``;
    row format (``instances``: a list of values when the signature has one input, else of objects keyed by
    input name) answers ``{"predictions": [...]}`` (a list of objects when there are several outputs);
    columnar format (``inputs``: a value or an object keyed by input name) answers ``{"outputs": ...}``.
    ``{"b64": ...}`` values are decoded for string inputs; string outputs whose names end in ``_bytes``
    come back as ``{"b64": ...}``. ``GET /v1/models/NAME[/versions/N]`` gives the version status and
    ``GET .../metadata`` the signatures. Errors are ``{"error": "..."}`` with TF Serving's HTTP codes
    (404 for an unknown model or version, 400 for INVALID_ARGUMENT and FAILED_PRECONDITION, 500 otherwise).

gRPC (``grpc.server`` on 127.0.0.1, a free port)
    ``tensorflow.serving.PredictionService/Predict``, with the same model and version lookup, status codes
    NOT_FOUND / FAILED_PRECONDITION / INVALID_ARGUMENT, and outputs as typed proto fields (TF Serving's
    default ``AsProtoField`` serialisation).

Also helpers the serving tests share: a tiny model with spread-out logits and real PH2 images.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import io
import json
import pathlib
import re
import threading

import numpy as np
import tensorflow as tf

_PREDICT_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:predict")
_STATUS_PATH = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata)?")
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ServingFailure(Exception):
    """A request failed with a TF status ``code`` (e.g. ``"INVALID_ARGUMENT"``) and ``message``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _tf_error_text(error: tf.errors.OpError) -> str:
    """TF's message without the Python-side "Detected at node ... File ..." decoration that only eager
    execution adds (the C++ server reports the op's message and node)."""
    lines = [
        line
        for line in error.message.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "  File ", "<stack traces unavailable>"))
    ]
    return "\n".join(lines) or error.message


class ServingDouble:
    """Serves ``models`` (name -> base path holding numbered version folders) over REST and gRPC."""

    def __init__(self, models: dict):
        self.models = {}
        for name, base_path in models.items():
            versions = sorted(
                int(p.name)
                for p in pathlib.Path(base_path).iterdir()
                if p.name.isdigit() and (p / "saved_model.pb").exists()
            )
            self.models[name] = {v: tf.saved_model.load(str(pathlib.Path(base_path) / str(v))) for v in versions}
        self.requests = 0
        self._http = self._grpc = None

    # ----------------------------------------------------------------------------------- the core ---

    def _servable(self, name, version):
        versions = self.models.get(name)
        if not versions:
            raise ServingFailure(
                "NOT_FOUND",
                f"Servable not found for request: Latest({name})"
                if version is None
                else f"Servable not found for request: Specific({name}, {version})",
            )
        if version is None:
            return max(versions), versions[max(versions)]
        if int(version) not in versions:
            raise ServingFailure("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return int(version), versions[int(version)]

    def signature(self, name, version, signature_name):
        version, loaded = self._servable(name, version)
        signature_name = signature_name or "serving_default"
        if signature_name not in loaded.signatures:
            raise ServingFailure("FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.')
        return version, loaded.signatures[signature_name]

    @staticmethod
    def input_specs(signature) -> dict:
        return dict(signature.structured_input_signature[1])

    def run(self, signature, inputs: dict) -> dict:
        """Call ``signature`` with numpy/list ``inputs``; TF errors become ``ServingFailure``."""
        specs = self.input_specs(signature)
        missing, extra = set(specs) - set(inputs), set(inputs) - set(specs)
        if missing or extra:
            raise ServingFailure(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(inputs)}!="
                f"{len(specs)} len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(specs))}}})."
                f" Sent extra: {{{','.join(sorted(extra))}}}. Missing but required: "
                f"{{{','.join(sorted(missing))}}}.",
            )
        tensors = {}
        for key, spec in specs.items():
            try:
                tensor = tf.constant(inputs[key], dtype=spec.dtype)
            except (TypeError, ValueError) as e:
                raise ServingFailure("INVALID_ARGUMENT", f"input {key!r}: expected {spec.dtype.name}: {e}") from None
            if not spec.shape.is_compatible_with(tensor.shape):
                raise ServingFailure(
                    "INVALID_ARGUMENT",
                    f"input {key!r}: shape {tensor.shape} does not match the signature's {spec.shape}",
                )
            tensors[key] = tensor
        self.requests += 1
        try:
            outputs = signature(**tensors)
        except tf.errors.OpError as e:
            raise ServingFailure(_status_name(e), _tf_error_text(e)) from None
        return {key: value.numpy() for key, value in outputs.items()}

    # --------------------------------------------------------------------------------------- REST ---

    def rest_predict(self, name, version, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ServingFailure("INVALID_ARGUMENT", f"JSON Parse error: {e}") from None
        if not isinstance(request, dict):
            raise ServingFailure("INVALID_ARGUMENT", "JSON Value: request body must be an object")
        if ("instances" in request) == ("inputs" in request):
            raise ServingFailure(
                "INVALID_ARGUMENT",
                "JSON Value: must have exactly one of 'instances' (row format) or 'inputs' (columnar format)",
            )
        signature_name = request.get("signature_name") or "serving_default"
        _, loaded = self._servable(name, version)
        if signature_name not in loaded.signatures:  # the REST handler looks the inputs up first
            raise ServingFailure(
                "INVALID_ARGUMENT", f'Serving signature name: "{signature_name}" not found in signature def'
            )
        _, signature = self.signature(name, version, signature_name)
        specs = self.input_specs(signature)
        row_format = "instances" in request
        inputs = (
            self._rows_to_inputs(request["instances"], specs)
            if row_format
            else self._columns_to_inputs(request["inputs"], specs)
        )
        outputs = self.run(signature, inputs)
        encoded = {key: _to_json(key, value) for key, value in outputs.items()}
        if row_format:
            sizes = {len(v) for v in encoded.values() if isinstance(v, list)}
            if len(sizes) != 1:
                raise ServingFailure(
                    "INVALID_ARGUMENT", "Tensor name: outputs have different 0-th dimensions; use the columnar format"
                )
            count = sizes.pop()
            if len(encoded) == 1:
                return {"predictions": next(iter(encoded.values()))}
            return {"predictions": [{key: value[i] for key, value in encoded.items()} for i in range(count)]}
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}

    @staticmethod
    def _decode(value, spec):
        """JSON values -> numpy-able nested lists; ``{"b64": ...}`` objects become bytes for string inputs."""
        if isinstance(value, list):
            return [ServingDouble._decode(v, spec) for v in value]
        if isinstance(value, dict):
            if set(value) != {"b64"}:
                raise ServingFailure(
                    "INVALID_ARGUMENT", f'JSON object: expected {{"b64": ...}}, got keys {sorted(value)}'
                )
            if spec.dtype != tf.string:
                raise ServingFailure(
                    "INVALID_ARGUMENT",
                    f"JSON Value: b64 is only allowed for DT_STRING inputs, this one is {spec.dtype.name}",
                )
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError) as e:
                raise ServingFailure("INVALID_ARGUMENT", f"Unable to base64 decode: {e}") from None
        if isinstance(value, str) and spec.dtype == tf.string:
            return value.encode("utf-8")
        return value

    def _rows_to_inputs(self, instances, specs) -> dict:
        if not isinstance(instances, list):
            raise ServingFailure("INVALID_ARGUMENT", "JSON Value: 'instances' must be a list")
        named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances) and instances
        if not named:
            if len(specs) != 1:
                raise ServingFailure(
                    "INVALID_ARGUMENT",
                    f"JSON Value: expected objects with the named inputs {sorted(specs)} in 'instances'",
                )
            key, spec = next(iter(specs.items()))
            return {key: self._decode(instances, spec)}
        keys = set(instances[0])
        if any(set(i) != keys for i in instances):
            raise ServingFailure(
                "INVALID_ARGUMENT", "Failed to process element: all objects in 'instances' must have the same keys"
            )
        unknown = keys - set(specs)
        if unknown:
            raise ServingFailure(
                "INVALID_ARGUMENT",
                f"JSON object: input {sorted(unknown)[0]!r} is not in the signature (inputs: {sorted(specs)})",
            )
        return {key: [self._decode(i[key], specs[key]) for i in instances] for key in keys}

    def _columns_to_inputs(self, inputs, specs) -> dict:
        if isinstance(inputs, dict) and set(inputs) != {"b64"}:
            unknown = set(inputs) - set(specs)
            if unknown:
                raise ServingFailure(
                    "INVALID_ARGUMENT",
                    f"JSON object: input {sorted(unknown)[0]!r} is not in the signature (inputs: {sorted(specs)})",
                )
            return {key: self._decode(value, specs[key]) for key, value in inputs.items()}
        if len(specs) != 1:
            raise ServingFailure(
                "INVALID_ARGUMENT", f"JSON Value: expected an object with the named inputs {sorted(specs)}"
            )
        key, spec = next(iter(specs.items()))
        return {key: self._decode(inputs, spec)}

    def rest_status(self, name, version, metadata: bool) -> dict:
        if name not in self.models:
            raise ServingFailure("NOT_FOUND", f"Could not find any versions of model {name}")
        version, loaded = self._servable(name, version) if (version is not None or metadata) else (None, None)
        if metadata:
            signatures = {}
            for key, fn in loaded.signatures.items():
                signatures[key] = {
                    "inputs": {k: _tensor_info(s) for k, s in self.input_specs(fn).items()},
                    "outputs": {k: _tensor_info(s) for k, s in fn.structured_outputs.items()},
                    "method_name": "tensorflow/serving/predict",
                }
            return {
                "model_spec": {"name": name, "signature_name": "", "version": str(version)},
                "metadata": {"signature_def": {"signature_def": signatures}},
            }
        versions = [version] if version is not None else sorted(self.models[name], reverse=True)
        return {
            "model_version_status": [
                {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in versions
            ]
        }

    def _handler(self):
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status, document):
                data = json.dumps(document).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, work):
                try:
                    self._reply(200, work())
                except ServingFailure as e:
                    self._reply(_HTTP_STATUS.get(e.code, 500), {"error": e.message})

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                match = _PREDICT_PATH.fullmatch(self.path)
                if not match:
                    return self._handle(lambda: _raise("INVALID_ARGUMENT", f"Malformed request: POST {self.path}"))
                name, version = match.group(1), match.group(2)
                self._handle(lambda: double.rest_predict(name, None if version is None else int(version), body))

            def do_GET(self):  # noqa: N802
                match = _STATUS_PATH.fullmatch(self.path)
                if not match:
                    return self._handle(lambda: _raise("INVALID_ARGUMENT", f"Malformed request: GET {self.path}"))
                name, version, metadata = match.groups()
                self._handle(
                    lambda: double.rest_status(name, None if version is None else int(version), bool(metadata))
                )

        return Handler

    # --------------------------------------------------------------------------------------- gRPC ---

    def _grpc_servicer(self):
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        double = self

        class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
                try:
                    version = request.model_spec.version.value if request.model_spec.HasField("version") else None
                    version, signature = double.signature(
                        request.model_spec.name, version, request.model_spec.signature_name
                    )
                    inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
                    outputs = double.run(signature, inputs)
                except ServingFailure as e:
                    context.abort(getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN), e.message)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = request.model_spec.name
                response.model_spec.version.value = version
                response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(_as_proto_field(value))
                return response

        return PredictionService(), prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server

    # -------------------------------------------------------------------------------- start / stop ---

    def start(self, grpc_server: bool = True) -> ServingDouble:
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.rest_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        if grpc_server:
            import grpc

            servicer, add = self._grpc_servicer()
            self._grpc = grpc.server(
                concurrent.futures.ThreadPoolExecutor(max_workers=4),
                options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
            )
            add(servicer, self._grpc)
            port = self._grpc.add_insecure_port("127.0.0.1:0")
            self._grpc.start()
            self.grpc_target = f"127.0.0.1:{port}"
        return self

    def stop(self):
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc:
            self._grpc.stop(grace=None)


def _raise(code, message):
    raise ServingFailure(code, message)


def _status_name(error: tf.errors.OpError) -> str:
    """``INVALID_ARGUMENT`` etc. from a TF error's code."""
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Name(error.error_code)


def _to_json(key, value: np.ndarray):
    """A numpy output as TF Serving writes it: nested lists; ``{"b64"}`` for ``*_bytes`` strings."""
    if value.dtype.kind in ("S", "O"):
        if key.endswith("_bytes"):
            return _map_nested(value.tolist(), lambda b: {"b64": base64.b64encode(b).decode("ascii")})
        return _map_nested(value.tolist(), lambda b: b.decode("utf-8", "replace"))
    return value.tolist()


def _map_nested(values, fn):
    return [_map_nested(v, fn) for v in values] if isinstance(values, list) else fn(values)


def _tensor_info(spec) -> dict:
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    return {
        "dtype": "DT_" + spec.dtype.name.upper(),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name or "",
    }


def _as_proto_field(value: np.ndarray):
    """A ``TensorProto`` with the values in typed fields, as TF Serving's default serialisation."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    proto = tensor_pb2.TensorProto(
        dtype=tf.as_dtype(value.dtype if value.dtype.kind not in "SO" else tf.string).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in value.shape]
        ),
    )
    flat = value.reshape(-1)
    if value.dtype.kind in "SO":
        proto.string_val.extend(flat.tolist())
    elif value.dtype in (np.float32,):
        proto.float_val.extend(flat.tolist())
    elif value.dtype == np.float64:
        proto.double_val.extend(flat.tolist())
    elif value.dtype in (np.int32, np.int16, np.int8, np.uint8, np.uint16):
        proto.int_val.extend(flat.tolist())
    elif value.dtype == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif value.dtype == np.bool_:
        proto.bool_val.extend(flat.tolist())
    else:
        proto.tensor_content = flat.tobytes()
    return proto


# ------------------------------------------------------------------------------ shared test helpers ---


def save_test_model(path, image_size=(64, 96), num_classes=1, seed=0):
    """A tiny untrained U-Net saved as ``path`` (a ``.keras`` file). Its logits layer is scaled up so that
    few probabilities sit within float rounding of the threshold (an untrained net's logits cluster near 0,
    where two correct implementations could flip pixels); masks still depend on the image."""
    import keras

    from kseg.models import build_preset

    keras.utils.set_random_seed(seed)
    model = build_preset("unet-small", image_size=image_size, num_classes=num_classes, base_filters=4, depth=3)
    kernel, bias = model.get_layer("logits").get_weights()
    shift = -0.5 if num_classes == 1 else np.linspace(0.3, -0.3, num_classes)
    model.get_layer("logits").set_weights([kernel * 20.0, bias + shift])
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def ph2_image_paths(ph2_dir, cases=("IMD002", "IMD003", "IMD004")):
    images = pathlib.Path(ph2_dir) / "PH2 Dataset images"
    return [images / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp" for case in cases]


def encode(image: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def mismatch(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.count_nonzero(a != b))


def bad_inputs(image: np.ndarray) -> dict:
    """name -> (bytes, the INVALID_ARGUMENT text expected when sent as the second image of a request, or None
    where the image must work)."""
    from PIL import Image

    png = encode(image, "PNG")
    jpeg = encode(image, "JPEG")
    huge_header = bytearray(encode(image[:1, :1], "PNG"))
    huge_header[16:24] = (10000).to_bytes(4, "big") + (9000).to_bytes(4, "big")  # IHDR width, height
    big = np.zeros((4000, 6000, 3), np.uint8)
    big[1000:3000, 2000:4500] = (120, 60, 40)
    return {
        "not_an_image": (b"this is not an image at all", "image_bytes[1] is not a PNG, JPEG, BMP, GIF or WebP image"),
        "empty": (b"", "image_bytes[1] is empty"),
        "truncated_png": (png[: len(png) // 2], "image_bytes[1] is a truncated PNG"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "image_bytes[1] is a truncated JPEG"),
        "tiff": (encode(image, "TIFF"), "image_bytes[1] is not a PNG, JPEG, BMP, GIF or WebP image"),
        "bmp_1bit": (encode(image[..., 0] > 100, "BMP"), "image_bytes[1] is a 1-bit BMP"),
        "too_many_pixels": (bytes(huge_header), "image_bytes[1] is 10000x9000 pixels, more than the 50000000-pixel"),
        "png_16bit": (encode(image[..., 1].astype(np.uint16) * 257, "PNG"), None),
        "png_gray": (encode(image[..., 1], "PNG"), None),
        "png_rgba": (encode(np.dstack([image, np.full(image.shape[:2], 128, np.uint8)]), "PNG"), None),
        "png_palette": (encode(np.asarray(Image.fromarray(image).convert("P")), "PNG"), None),
        "gif": (encode(image, "GIF"), None),
        "webp_lossless": (encode(image, "WEBP", lossless=True), None),
        "photo_6000x4000": (encode(big, "PNG", compress_level=1), None),
    }


#: The cases of ``bad_inputs``: all either work or fail with INVALID_ARGUMENT naming image_bytes[1].
BAD_INPUT_CASES = [
    "not_an_image",
    "empty",
    "truncated_png",
    "truncated_jpeg",
    "tiff",
    "bmp_1bit",
    "too_many_pixels",
    "png_16bit",
    "png_gray",
    "png_rgba",
    "png_palette",
    "gif",
    "webp_lossless",
    "photo_6000x4000",
]
