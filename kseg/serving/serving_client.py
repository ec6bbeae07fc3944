"""Clients for a kseg model served by TensorFlow Serving (REST, gRPC, or the export run in process), and
sending image files to one: the library behind ``python -m kseg.client``. No TensorFlow needed except for
gRPC's message types and the in-process client.

It sends the images to the export's ``serving_default`` signature (``image_bytes`` in; ``mask_bytes``,
``height``, ``width``, ``foreground_fraction`` out; see ``kseg.export``) and writes ``NAME_mask.png`` and
``NAME_overlay.png`` with ``kseg.core.outputs.write_prediction``, exactly as ``kseg.predict`` does for a local
model. REST uses only the standard library; gRPC needs ``grpcio`` and ``tensorflow-serving-api``
(``pip install grpcio && pip install --no-deps tensorflow-serving-api``), imported only when ``--grpc`` is used.

Images go as their original bytes when the server decodes the format the way Pillow does (PNG, JPEG, GIF,
WebP, 24-bit BMP); other files (TIFF, 1-bit or palette BMPs, 16-bit PNGs, photos with an EXIF orientation,
which TensorFlow's decoders ignore) are decoded here, turned upright, and sent as lossless PNG.
``--reencode`` sends every image as PNG decoded by Pillow, so that masks match
``kseg.predict``'s exactly even for JPEGs (TensorFlow's and Pillow's JPEG decoders differ by a few levels).

Files that cannot be read, and images the server rejects (INVALID_ARGUMENT), are reported by name and
skipped; the exit status is then 1. Connection failures, unknown models or signatures and other server
errors stop the run with exit status 2.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import pathlib
import re
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

from kseg.core import imageio, inputs, outputs
from kseg.core.errors import KsegError, UsageError
from kseg.core.serving_contract import IMAGE_BYTES as INPUT_NAME
from kseg.core.serving_contract import INSTANCE_OUTPUTS, KEYPOINT_OUTPUTS, resolve_saved_model
from kseg.core.serving_contract import SERVING_OUTPUTS as OUTPUT_NAMES
from kseg.core.serving_contract import SERVING_SIGNATURE as DEFAULT_SIGNATURE
from kseg.prediction import model_trust
from kseg.tasks import instance_files, keypoint_files

GRPC_INSTALL_HINT = (
    "gRPC needs grpcio and tensorflow-serving-api: pip install grpcio && "
    "pip install --no-deps tensorflow-serving-api  (--no-deps: it would otherwise pull in the "
    "full tensorflow package next to tensorflow-cpu); or use REST with --server"
)


class ServingError(KsegError, RuntimeError):
    """The server cannot be used as asked (unreachable, unknown model, version or signature): fix the
    address or flags and run again (exit status 2, like any usage error)."""


class RequestRejected(ServingError):
    """The server rejected a request's data (HTTP 400 / INVALID_ARGUMENT), e.g. an image it cannot decode."""


@dataclasses.dataclass
class Prediction:
    """A semantic model's answer for one image: its mask PNG, size and share of foreground."""

    mask_png: bytes
    height: int
    width: int
    foreground_fraction: float

    def files(self, rgb, source: str) -> tuple[dict[str, bytes], str]:
        """The files ``kseg.predict`` writes for this image, and what to log; ServingError if unusable."""
        mask, binary = decode_mask(self, source)
        _check_size(mask, rgb, source)
        return outputs.semantic_files(rgb, mask, binary, pathlib.Path(source).name), (
            f"foreground {100 * self.foreground_fraction:.1f}%"
        )


@dataclasses.dataclass
class InstancesPrediction:
    """An instance model's answer for one image: its label image PNG, size, and the people's rows."""

    label_png: bytes
    height: int
    width: int
    count: int
    scores: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    def files(self, rgb, source: str) -> tuple[dict[str, bytes], str]:
        try:
            labels = instance_files.read_label_png(self.label_png)
        except Exception as e:  # noqa: BLE001 - Pillow raises several types for a bad PNG
            raise ServingError(f"{source}: the server's label_bytes is not a PNG ({e})") from None
        if labels.shape != (self.height, self.width):
            raise ServingError(
                f"{source}: the label image is {labels.shape[1]}x{labels.shape[0]} but the server reported "
                f"{self.width}x{self.height}"
            )
        _check_size(labels, rgb, source)
        result = instance_files.InstanceResult(
            labels, self.scores[: self.count], self.boxes[: self.count], self.areas[: self.count]
        )
        name = pathlib.Path(source).name
        return instance_files.prediction_files(rgb, result, name), f"{self.count} people"


@dataclasses.dataclass
class KeypointsPrediction:
    """A keypoint model's answer for one image: each person's joints (x, y, score) at the image's size."""

    keypoints: np.ndarray  # [max_people, J, 3]
    scores: np.ndarray
    count: int
    height: int
    width: int
    joint_names: tuple

    def files(self, rgb, source: str) -> tuple[dict[str, bytes], str]:
        if (self.height, self.width) != rgb.shape[:2]:
            raise SizeMismatch(
                f"{source}: the server read the image as {self.width}x{self.height}, here it is "
                f"{rgb.shape[1]}x{rgb.shape[0]} (the server decoded it differently; try --reencode)"
            )
        result = keypoint_files.KeypointResult(
            self.keypoints[: self.count], self.scores[: self.count], self.joint_names, (self.height, self.width)
        )
        name = pathlib.Path(source).name
        return keypoint_files.prediction_files(rgb, result, name), f"{self.count} people"


class SizeMismatch(ValueError):
    """The server's output has another size than the image as read here (it decoded it differently)."""


def _check_size(array, rgb, source) -> None:
    if array.shape[:2] != rgb.shape[:2]:
        raise SizeMismatch(
            f"{source}: the server's mask is {array.shape[1]}x{array.shape[0]}, the image "
            f"{rgb.shape[1]}x{rgb.shape[0]} (the server decoded it differently; try --reencode)"
        )


#: The outputs of each kind of kseg export's serving signature.
TASK_OUTPUTS = {"semantic": OUTPUT_NAMES, "instances": INSTANCE_OUTPUTS, "keypoints": KEYPOINT_OUTPUTS}


def _bytes(value) -> bytes:
    """A bytes output as REST (``{"b64": ...}`` or base64 text), gRPC or in-process code gives it."""
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(value)


def prediction_from_row(row: dict, where: str):
    """One image's outputs (``{name: value}``) as a ``Prediction`` or ``InstancesPrediction``, by the names the
    signature returned; ServingError when they are not a kseg export's."""
    names = set(row)
    try:
        if set(INSTANCE_OUTPUTS) <= names:
            return InstancesPrediction(
                _bytes(row["label_bytes"]),
                int(row["height"]),
                int(row["width"]),
                int(row["count"]),
                np.asarray(row["scores"], np.float32).reshape(-1),
                np.asarray(row["boxes"], np.float32).reshape(-1, 4),
                np.asarray(row["areas"], np.int64).reshape(-1),
            )
        if set(KEYPOINT_OUTPUTS) <= names:
            joint_names = tuple(
                value.decode() if isinstance(value, bytes) else str(value)
                for value in np.asarray(row["joint_names"]).reshape(-1)
            )
            return KeypointsPrediction(
                np.asarray(row["keypoints"], np.float32).reshape(-1, len(joint_names), 3),
                np.asarray(row["scores"], np.float32).reshape(-1),
                int(row["count"]),
                int(row["height"]),
                int(row["width"]),
                joint_names,
            )
        if set(OUTPUT_NAMES) <= names:
            return Prediction(
                _bytes(row["mask_bytes"]), int(row["height"]), int(row["width"]), float(row["foreground_fraction"])
            )
    except (KeyError, TypeError, ValueError) as e:
        raise ServingError(
            f"{where}: prediction garbles {e}; is this a kseg export and --signature its serving signature?"
        ) from None
    raise ServingError(
        f"{where}: outputs {sorted(names)[:10]}; a kseg export's serving signature returns "
        f"{' or '.join(str(v) for v in TASK_OUTPUTS.values())}; is --signature its serving signature?"
    )


#: TF Serving's messages for a request that does not fit the signature (as opposed to one image's data). Its
#: REST API answers an input name the signature lacks with "JSON object: does not have named input: NAME"
#: (the test double with "input 'NAME' is not in the signature").
_REQUEST_PROBLEM = re.compile(
    r'signature (name|key):? "|does not match signature|input tensor alias not found|'
    r"Missing .* in (the )?request|does not have named input|is not in the signature",
    re.IGNORECASE,
)


#: Server messages can quote the request (kilobytes of image bytes): keep the start, which says what is wrong.
MESSAGE_CHARS = 300


def shorten(message: str) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS] + f"... ({len(message)} chars)"


def _fatal_if_not_about_images(message: str, where: str, hint: str = "") -> None:
    """A rejected request whose message is about the request itself (a wrong signature or input name) is
    fatal: retrying image by image would fail the same way."""
    if _REQUEST_PROBLEM.search(message):
        raise ServingError(f"{where} rejected the request: {shorten(message)}{hint}")


# ---------------------------------------------------------------------------------------------- REST ---


def check_server_address(server: str) -> str:
    """``http://HOST:PORT`` (the scheme added when missing); any other scheme (``file://``, ``ftp://``) is a
    ``UsageError`` now, not a 120-second wait for an answer that cannot come."""
    address = server if "://" in server else "http://" + server
    try:
        parsed = urllib.parse.urlsplit(address)
        usable = parsed.scheme.lower() in ("http", "https") and parsed.hostname and parsed.port != 0
    except ValueError:  # an unclosed [ or a port that is not a number in [0, 65535]
        usable = False
    if not usable:
        raise UsageError(
            f"--server {server!r}: expected TF Serving's REST address, http://HOST:PORT (e.g. "
            f"http://localhost:8501); use --grpc HOST:PORT for gRPC or --saved-model PATH for a local export"
        )
    return address.rstrip("/")


class RestClient:
    """TF Serving's REST predict API: ``POST /v1/models/NAME[/versions/N]:predict``."""

    def __init__(
        self,
        server: str,
        model: str,
        version: int | None = None,
        signature: str = DEFAULT_SIGNATURE,
        timeout: float = 120.0,
        request_format: str = "row",
    ):
        self.server = check_server_address(server)
        self.model, self.version, self.signature = model, version, signature
        self.timeout, self.request_format = timeout, request_format
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        self.url = self.server + path + ":predict"

    def describe(self) -> str:
        return f"{self.url} (signature {self.signature}, {self.request_format} format)"

    def request_body(self, payloads) -> dict:
        encoded = [{"b64": base64.b64encode(p).decode("ascii")} for p in payloads]
        if self.request_format == "row":
            body = {"instances": [{INPUT_NAME: item} for item in encoded]}
        else:
            body = {"inputs": {INPUT_NAME: encoded}}
        return {"signature_name": self.signature, **body}

    def predict(self, payloads) -> list[Prediction]:
        data = json.dumps(self.request_body(payloads)).encode("utf-8")
        request = urllib.request.Request(
            self.url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            reason = getattr(e.reason, "strerror", None) or str(e.reason)
            raise ServingError(
                f"cannot reach TF Serving at {self.server}: {reason}. Is the server running and "
                f"its REST port (default 8501) published? See export/README.md"
            ) from None
        except (TimeoutError, ConnectionError) as e:
            raise ServingError(
                f"no answer from {self.server} ({type(e).__name__}: {e}); try a larger "
                f"--timeout or a smaller --batch-size"
            ) from None
        except http.client.HTTPException as e:
            raise ServingError(
                f"{self.server} closed the connection before its answer was complete "
                f"({type(e).__name__}); is it a TF Serving REST port, and did the server restart? "
                f"Try again, or a smaller --batch-size"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServingError(f"{self.url} answered with something that is not JSON ({e})") from None
        return self._parse(document, len(payloads))

    def _http_error(self, error: urllib.error.HTTPError) -> ServingError:
        body = error.read().decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body.strip()[:500] or error.reason
        where = f"{self.url}"
        if error.code == 404:
            return ServingError(
                f"{where}: HTTP 404: {message}. Check --model"
                f"{' and --version' if self.version is not None else ''} against the server's "
                f"model config (GET {self.server}/v1/models/{self.model} shows its versions)"
            )
        if error.code == 400:
            _fatal_if_not_about_images(
                message,
                where,
                f" (check --signature {self.signature!r}: kseg.client sends "
                f"encoded images to a signature with an {INPUT_NAME!r} "
                f"input, such as {DEFAULT_SIGNATURE!r})",
            )
            return RequestRejected(shorten(message))
        return ServingError(f"{where}: HTTP {error.code} {error.reason}: {shorten(message)}")

    def _parse(self, document, count) -> list[Prediction]:
        if not isinstance(document, dict):
            raise ServingError(f"{self.url}: unexpected answer {str(document)[:200]}")
        if "predictions" in document:
            rows = document["predictions"]
        elif "outputs" in document:
            columns = document["outputs"]
            if not isinstance(columns, dict):
                raise ServingError(f"{self.url}: expected named outputs, got {str(columns)[:200]}")
            try:
                rows = [{name: values[i] for name, values in columns.items()} for i in range(count)]
            except (IndexError, TypeError) as e:
                raise ServingError(
                    f"{self.url}: outputs do not hold {count} predictions ({e}); is this a kseg "
                    f"export and --signature its serving signature?"
                ) from None
        else:
            raise ServingError(f"{self.url}: answer has neither 'predictions' nor 'outputs': {str(document)[:200]}")
        if not isinstance(rows, list) or len(rows) != count or not all(isinstance(r, dict) for r in rows):
            raise ServingError(f"{self.url}: expected {count} predictions, got {str(rows)[:200]}")
        return [prediction_from_row(row, self.url) for row in rows]


# ---------------------------------------------------------------------------------------------- gRPC ---


def _import_grpc():
    try:
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as e:
        raise ServingError(f"--grpc: cannot import {e.name or e}. {GRPC_INSTALL_HINT}") from None
    return grpc, predict_pb2, prediction_service_pb2_grpc


def tensor_values(proto) -> list:
    """The values of a ``TensorProto`` as a flat list (typed fields or packed ``tensor_content``)."""
    from tensorflow.core.framework import types_pb2

    if proto.dtype == types_pb2.DT_STRING:
        return list(proto.string_val)
    if proto.tensor_content:
        dtype = {
            types_pb2.DT_INT32: "<i4",
            types_pb2.DT_INT64: "<i8",
            types_pb2.DT_FLOAT: "<f4",
            types_pb2.DT_DOUBLE: "<f8",
        }[proto.dtype]
        return np.frombuffer(proto.tensor_content, dtype=dtype).tolist()
    for field in ("int_val", "int64_val", "float_val", "double_val"):
        values = list(getattr(proto, field))
        if values:
            return values
    return []


class GrpcClient:
    """TF Serving's gRPC ``PredictionService.Predict``."""

    def __init__(
        self,
        target: str,
        model: str,
        version: int | None = None,
        signature: str = DEFAULT_SIGNATURE,
        timeout: float = 120.0,
    ):
        self.grpc, self.predict_pb2, services = _import_grpc()
        self.target, self.model, self.version, self.signature, self.timeout = target, model, version, signature, timeout
        # TF Serving accepts messages up to 2 GiB; the client's default limit (4 MiB) would refuse big batches.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = self.grpc.insecure_channel(target, options=options)
        self.stub = services.PredictionServiceStub(self.channel)

    def describe(self) -> str:
        return f"grpc://{self.target} model {self.model} (signature {self.signature})"

    def close(self):
        self.channel.close()

    def predict(self, payloads) -> list[Prediction]:
        from tensorflow.core.framework import types_pb2

        request = self.predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = self.signature
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        tensor = request.inputs[INPUT_NAME]
        tensor.dtype = types_pb2.DT_STRING
        tensor.tensor_shape.dim.add(size=len(payloads))
        tensor.string_val.extend(payloads)
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except self.grpc.RpcError as e:
            raise self._rpc_error(e) from None
        count = len(payloads)
        columns = {name: tensor_rows(proto, count) for name, proto in response.outputs.items()}
        if any(values is None for values in columns.values()):
            raise ServingError(f"{self.describe()}: expected {count} values per output")
        rows = [{name: values[i] for name, values in columns.items()} for i in range(count)]
        return [prediction_from_row(row, self.describe()) for row in rows]

    def _rpc_error(self, error) -> ServingError:
        code = error.code()
        details = error.details() or ""
        codes = self.grpc.StatusCode
        if code == codes.UNAVAILABLE:
            return ServingError(
                f"cannot reach TF Serving at {self.target} over gRPC: {details}. Is the server "
                f"running and its gRPC port (default 8500) published? See export/README.md"
            )
        if code == codes.DEADLINE_EXCEEDED:
            return ServingError(
                f"no answer from {self.target} within {self.timeout:g} s; try a larger --timeout "
                f"or a smaller --batch-size"
            )
        if code == codes.NOT_FOUND:
            return ServingError(
                f"{self.describe()}: NOT_FOUND: {details}. Check --model"
                f"{' and --version' if self.version is not None else ''} against the server's "
                f"model config"
            )
        if code == codes.INVALID_ARGUMENT:
            _fatal_if_not_about_images(
                details,
                self.describe(),
                f" (check --signature {self.signature!r}: "
                f"kseg.client sends encoded images to a signature "
                f"with an {INPUT_NAME!r} input)",
            )
            return RequestRejected(shorten(details))
        return ServingError(f"{self.describe()}: {code.name}: {shorten(details)}")


def tensor_rows(proto, count: int) -> list | None:
    """The values of a ``TensorProto`` split into ``count`` rows (one per image), or None if they do not split."""
    values = tensor_values(proto)
    if count == 0 or len(values) % count:
        return None
    per_row = len(values) // count
    return (
        values
        if per_row == 1 and len(proto.tensor_shape.dim) <= 1
        else [values[i * per_row : (i + 1) * per_row] for i in range(count)]
    )


# ---------------------------------------------------------------------------------------- in process ---


class LocalClient:
    """The export's signature run in this process with ``tf.saved_model.load``: the graph TF Serving would
    run, without a server (for ``make demo``, smoke tests and machines without Docker)."""

    def __init__(self, path, signature: str = DEFAULT_SIGNATURE):
        import tensorflow as tf

        self._tf = tf
        path = pathlib.Path(path)
        resolved = resolve_saved_model(path)
        if resolved is None:
            raise UsageError(
                f"{path}: not an exported SavedModel (no saved_model.pb; expected "
                f"export/models/NAME or export/models/NAME/VERSION from python -m kseg.export)"
            )
        path = resolved
        self.path, self.signature = path, signature
        loaded = model_trust.load_saved_model(path)  # refuses what kseg.export did not write, before it runs
        if signature not in loaded.signatures:
            raise UsageError(f"{path}: no signature {signature!r}; it has {sorted(loaded.signatures)}")
        function = loaded.signatures[signature]
        input_names = sorted(function.structured_input_signature[1])
        if input_names != [INPUT_NAME]:
            raise UsageError(
                f"{path}: signature {signature!r} takes {input_names}, not encoded images; kseg.client "
                f"sends them to a signature with one {INPUT_NAME!r} input, such as "
                f"{DEFAULT_SIGNATURE!r}"
            )
        self._loaded, self._function = loaded, function

    def describe(self) -> str:
        return f"{self.path} (signature {self.signature}, in process)"

    def predict(self, payloads) -> list[Prediction]:
        tf = self._tf
        try:
            result = self._function(**{INPUT_NAME: tf.constant(list(payloads), tf.string)})
        except tf.errors.InvalidArgumentError as e:
            raise RequestRejected(e.message) from None
        rows = [{name: values[i].numpy() for name, values in result.items()} for i in range(len(payloads))]
        return [prediction_from_row(row, self.describe()) for row in rows]


# -------------------------------------------------------------------------------------------- inputs ---


def server_decodes_as_pillow(image: Image.Image) -> bool:
    """Whether TensorFlow's ``decode_image`` gives the same RGB pixels as ``imageio.to_rgb_array`` (up to JPEG
    decoder differences), so the file's own bytes can be sent."""
    if image.format == "BMP":
        return image.mode == "RGB"  # TF ignores BMP palettes and cannot read 1-bit BMPs
    if image.format == "PNG":
        return image.mode in ("RGB", "RGBA", "L", "LA", "P")  # not 16-bit (TF truncates, Pillow rounds)
    if image.format == "JPEG":
        return image.mode in ("RGB", "L")  # not CMYK
    return image.format in ("GIF", "WEBP")


def read_input(path, reencode: bool = False) -> tuple[np.ndarray, bytes]:
    """``(rgb uint8 [H, W, 3], bytes to send)`` for an image file; ``ImageReadError`` names the file."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise imageio.ImageReadError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise imageio.ImageReadError(f"{path}: file is empty, expected an encoded image (PNG, JPEG, BMP, ...)")
    image = imageio.decode_pil(data, source=str(path))
    rgb = imageio.to_rgb_array(image, source=str(path))
    # TensorFlow's decoders ignore EXIF orientation: a phone photo goes upright, as PNG, as kseg.predict sees it.
    if reencode or imageio.exif_rotates(image) or not server_decodes_as_pillow(image):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
        data = buffer.getvalue()
    return rgb, data


def decode_mask(prediction: Prediction, source: str) -> tuple[np.ndarray, bool]:
    """``(mask, binary)`` from a served PNG: 0/255 means a binary mask, anything else class ids (a multi-class
    mask never holds 255, and an all-zero mask is written the same either way)."""
    try:
        mask = np.asarray(Image.open(io.BytesIO(prediction.mask_png)).convert("L"))
    except Exception as e:  # noqa: BLE001 - Pillow raises several types for a bad PNG
        raise ServingError(f"{source}: the server's mask_bytes is not a PNG ({e})") from None
    if mask.shape != (prediction.height, prediction.width):
        raise ServingError(
            f"{source}: the mask is {mask.shape[1]}x{mask.shape[0]} but the server reported "
            f"{prediction.width}x{prediction.height}"
        )
    binary = bool(mask.max(initial=0) == 255)
    return ((mask > 127).astype(np.uint8) if binary else mask), binary


# -------------------------------------------------------------------------------------- the command ---


def send_files(client, files, output_dir, batch_size: int = 8, reencode: bool = False, log=print):
    """Send ``files`` in batches and write what ``kseg.predict`` writes for the served model's task (mask and
    overlay, or labels, overlay and JSON); returns ``(written, errors)``.

    A batch the server rejects is retried image by image, so one bad image fails alone; outputs are written
    by ``kseg.core.outputs.PredictionWriter``, as ``kseg.predict`` writes them.
    """
    writer = outputs.PredictionWriter(output_dir)
    errors, batch = writer.errors, []

    def write(item, prediction):
        path, stem, rgb = item
        try:
            files, summary = prediction.files(rgb, str(path))
        except SizeMismatch as e:
            errors.append(str(e))
            return
        paths = writer.write_files(path, stem, files)
        if paths:
            log(f"{path} -> {', '.join(p.name for p in paths)} ({summary})")

    def flush():
        try:
            predictions = client.predict([payload for _, payload in batch])
        except RequestRejected as e:
            if len(batch) == 1:
                errors.append(f"{batch[0][0][0]}: the server rejected it: {e}")
            else:
                for entry in batch:
                    try:
                        write(entry[0], client.predict([entry[1]])[0])
                    except RequestRejected as single:
                        errors.append(f"{entry[0][0]}: the server rejected it: {single}")
            batch.clear()
            return
        for (item, _), prediction in zip(batch, predictions):
            write(item, prediction)
        batch.clear()

    for path, stem in zip(files, inputs.output_stems(files)):
        try:
            rgb, payload = read_input(path, reencode)
        except imageio.ImageReadError as e:
            errors.append(str(e))
            continue
        batch.append(((path, stem, rgb), payload))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return writer.written, errors


def make_client(args):
    if args.saved_model:
        return LocalClient(args.saved_model, args.signature)
    if not args.model:
        raise UsageError("--model NAME is required with --server and --grpc (the name in models.config)")
    if args.grpc:
        return GrpcClient(args.grpc, args.model, args.version, args.signature, args.timeout)
    return RestClient(args.server, args.model, args.version, args.signature, args.timeout, args.format)
