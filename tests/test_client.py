"""``kseg.client`` end to end against the TF Serving test double (``serving_double``), over REST and gRPC.

The double serves real exports of a tiny model with TF Serving's REST and gRPC rules; the client's masks are
compared with the Keras model's (same post-processing) on real PH2 images. Mask tolerance as in
``test_export``: 0.05% of the pixels plus 2 for lossless inputs; JPEGs sent as their own bytes are decoded by
TensorFlow on the server and by Pillow for ``kseg.predict``, so they get 1% (``--reencode`` makes them exact).
"""

import base64
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import serving_double as sd
from PIL import Image

from kseg import client
from kseg.core import imageio, outputs
from kseg.prediction import inference
from kseg.serving import saved_model_export, serving_client
from kseg.tasks import postprocess

CHOICE = postprocess.PostProcessing(threshold=0.5, fill_holes=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "lesions"
    sd.save_test_model(run / "best.keras", seed=1)
    postprocess.write(postprocess.sidecar_path(run / "best.keras"), CHOICE)
    return run


@pytest.fixture(scope="module")
def double(run_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("export")
    saved_model_export.export_model(run_dir, models, name="lesions")  # lesions/1
    saved_model_export.export_model(run_dir, models, name="small-limit", max_megapixels=0.3)  # refuses 765x572 images
    server = sd.ServingDouble({"lesions": models / "lesions", "small-limit": models / "small-limit"}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predictor(run_dir):
    return inference.load_predictor(run_dir)


@pytest.fixture(scope="module")
def inputs(ph2_dir, tmp_path_factory):
    """A folder with a PH2 BMP as stored (24-bit, sent as is), one as PNG, a small one as JPEG, and one as a
    palette BMP (which TF would misread: the client sends it as PNG)."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = sd.ph2_image_paths(ph2_dir)
    shutil.copy(paths[0], folder / "IMD002.bmp")
    Image.open(paths[1]).save(folder / "IMD003.png")
    small = Image.open(paths[2]).resize((190, 143), Image.BILINEAR)
    small.save(folder / "IMD004.jpg", quality=92)
    small.convert("P", palette=Image.ADAPTIVE).save(folder / "IMD004-palette.bmp")
    return folder


def expected_masks(predictor, folder):
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in imageio.IMAGE_SUFFIXES)
    images = [imageio.read_image(p) for p in files]
    return {p.stem: (image, mask) for p, image, mask in zip(files, images, predictor.predict(images))}


def check_outputs(out, predictor, folder, exact_jpeg=False):
    for stem, (image, expected) in expected_masks(predictor, folder).items():
        mask = outputs.decode_mask_png((out / f"{stem}_mask.png").read_bytes(), binary=True)
        lossy = stem == "IMD004" and not exact_jpeg
        allowed = 0.01 * expected.size if lossy else 2 + 0.0005 * expected.size
        assert sd.mismatch(mask, expected) <= allowed, stem
        assert 0 < expected.mean() < 1
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape == image.shape
        if not lossy:
            assert sd.mismatch(overlay, outputs.overlay(image, mask)) == 0


# ------------------------------------------------------------------------------------- end to end ---


@pytest.mark.parametrize("request_format", ["row", "columnar"])
def test_rest_client_writes_masks_like_kseg_predict(request_format, double, predictor, inputs, tmp_path, capsys):
    code = client.main(
        [
            str(inputs),
            "--server",
            double.rest_url,
            "--model",
            "lesions",
            "--out",
            str(tmp_path),
            "--format",
            request_format,
            "--batch-size",
            "3",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "4 of 4 images written" in captured.err
    assert "IMD002.bmp -> IMD002_mask.png, IMD002_overlay.png (foreground" in captured.out
    check_outputs(tmp_path, predictor, inputs)
    values = np.unique(np.asarray(Image.open(tmp_path / "IMD002_mask.png")))
    assert set(values) == {0, 255}  # binary masks as kseg.predict writes them


def test_grpc_client_writes_the_same_masks(double, predictor, inputs, tmp_path, capsys):
    code = client.main(
        [
            str(inputs / "IMD002.bmp"),
            str(inputs / "IMD004.jpg"),
            str(inputs / "IMD003.png"),
            str(inputs / "IMD004-palette.bmp"),
            "--grpc",
            double.grpc_target,
            "--model",
            "lesions",
            "--version",
            "1",
            "--out",
            str(tmp_path),
            "--reencode",
        ]
    )
    assert code == 0, capsys.readouterr().err
    check_outputs(tmp_path, predictor, inputs, exact_jpeg=True)


def test_saved_model_in_process_gives_the_same_masks(run_dir, predictor, inputs, tmp_path, capsys):
    saved_model_export.export_model(run_dir, tmp_path / "models", name="lesions")
    out = tmp_path / "out"
    code = client.main(
        [str(inputs), "--saved-model", str(tmp_path / "models" / "lesions"), "--out", str(out), "--reencode"]
    )
    assert code == 0, capsys.readouterr().err
    check_outputs(out, predictor, inputs, exact_jpeg=True)
    assert client.main([str(inputs), "--saved-model", str(tmp_path), "--out", str(out)]) == 2
    assert "not an exported SavedModel" in capsys.readouterr().err
    assert client.main([str(inputs), "--server", "http://127.0.0.1:1", "--out", str(out)]) == 2
    assert "--model NAME is required" in capsys.readouterr().err


def test_sends_original_bytes_only_where_tensorflow_decodes_like_pillow(inputs, tmp_path):
    assert serving_client.read_input(inputs / "IMD002.bmp")[1] == (inputs / "IMD002.bmp").read_bytes()
    assert serving_client.read_input(inputs / "IMD004.jpg")[1] == (inputs / "IMD004.jpg").read_bytes()
    Image.open(inputs / "IMD004.jpg").convert("1").save(tmp_path / "one-bit.bmp")  # like PH2's masks
    Image.open(inputs / "IMD004.jpg").save(tmp_path / "photo.tiff")
    for path, reencode in (
        (inputs / "IMD004-palette.bmp", False),
        (inputs / "IMD004.jpg", True),
        (tmp_path / "one-bit.bmp", False),
        (tmp_path / "photo.tiff", False),
    ):
        rgb, payload = serving_client.read_input(path, reencode=reencode)
        assert payload.startswith(b"\x89PNG") and sd.mismatch(sd.decode_png(payload), rgb) == 0


def test_unreadable_files_are_named_and_skipped(double, inputs, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(inputs / "IMD004.jpg", folder / "good.jpg")
    (folder / "broken.png").write_bytes(b"this is not an image")
    png = (inputs / "IMD003.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.bmp").write_bytes(b"")
    code = client.main(
        [
            str(folder),
            str(tmp_path / "missing.png"),
            "--server",
            double.rest_url,
            "--model",
            "lesions",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"skipped .*broken\.png: not a recognised image format", err)
    assert re.search(r"skipped .*truncated\.png: cannot decode image .*truncated", err)
    assert re.search(r"skipped .*empty\.bmp: file is empty", err)
    assert re.search(r"skipped .*missing\.png: no such file or folder", err)
    assert "1 of 4 images written" in err and "4 problem(s)" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_mask.png", "good_overlay.png"]


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_an_image_the_server_rejects_fails_alone(transport, double, inputs, tmp_path, capsys):
    where = ["--server", double.rest_url] if transport == "rest" else ["--grpc", double.grpc_target]
    code = client.main(
        [
            str(inputs / "IMD002.bmp"),
            str(inputs / "IMD004.jpg"),
            *where,
            "--model",
            "small-limit",
            "--out",
            str(tmp_path),
            "--batch-size",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert re.search(
        r"skipped .*IMD002\.bmp: the server rejected it: .*image_bytes\[0\] is 765x572 pixels, more "
        r"than the 300000-pixel limit",
        err,
    ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMD004_mask.png", "IMD004_overlay.png"]


# ---------------------------------------------------------------------------------- server errors ---


@pytest.mark.parametrize("transport", ["rest", "grpc"])
@pytest.mark.parametrize("case", ["unknown_model", "unknown_version", "unknown_signature", "connection_refused"])
def test_server_errors_stop_with_the_server_message(case, transport, double, inputs, tmp_path, capsys):
    closed_port = _closed_port()
    server = {"rest": ["--server", double.rest_url], "grpc": ["--grpc", double.grpc_target]}[transport]
    args, expected = {
        "unknown_model": (["--model", "nope"], r"Servable not found for request: Latest\(nope\)"),
        "unknown_version": (
            ["--model", "lesions", "--version", "9"],
            r"Servable not found for request: Specific\(lesions, 9\).*--version",
        ),
        "unknown_signature": (
            ["--model", "lesions", "--signature", "nope"],
            r'Serving signature (name|key): "nope" not found|signature key "nope" not found',
        ),
        "connection_refused": (["--model", "lesions"], r"cannot reach TF Serving at .*" + str(closed_port)),
    }[case]
    if case == "connection_refused":
        server = {
            "rest": ["--server", f"http://127.0.0.1:{closed_port}"],
            "grpc": ["--grpc", f"127.0.0.1:{closed_port}"],
        }[transport]
    code = client.main([str(inputs / "IMD004.jpg"), *server, *args, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"kseg\.client: error: .*" + expected, err), err
    assert "Traceback" not in err and not any(tmp_path.iterdir())


def test_missing_grpc_packages_give_install_instructions(monkeypatch, inputs, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis", None)
    code = client.main([str(inputs / "IMD004.jpg"), "--grpc", "127.0.0.1:1", "--model", "m", "--out", str(tmp_path)])
    assert code == 2
    assert "pip install --no-deps tensorflow-serving-api" in capsys.readouterr().err


def test_the_rest_client_does_not_import_tensorflow():
    script = "import sys; import kseg.client; print(sorted(m for m in sys.modules if m.startswith('tensorflow')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the double follows TF Serving's rules ---


def _post(url, document):
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_rest_rules_row_columnar_b64_status_and_errors(double, inputs):
    url = f"{double.rest_url}/v1/models/lesions"
    data = {"b64": base64.b64encode((inputs / "IMD004.jpg").read_bytes()).decode()}
    status, rows = _post(url + ":predict", {"instances": [data, data]})  # one input: bare values
    assert status == 200 and len(rows["predictions"]) == 2
    row = rows["predictions"][0]
    assert set(row) == {"mask_bytes", "height", "width", "foreground_fraction"}
    assert set(row["mask_bytes"]) == {"b64"} and (row["height"], row["width"]) == (143, 190)
    status, columns = _post(
        url + "/versions/1:predict", {"signature_name": "serving_default", "inputs": {"image_bytes": [data]}}
    )
    assert status == 200 and columns["outputs"]["mask_bytes"] == [row["mask_bytes"]]
    status, probabilities = _post(
        url + ":predict", {"signature_name": "predict_images", "inputs": np.full((1, 64, 96, 3), 0.5).tolist()}
    )
    assert status == 200 and np.asarray(probabilities["outputs"]).shape == (1, 64, 96, 1)  # one output: no name

    assert _get(url) == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )
    status, metadata = _get(url + "/metadata")
    assert status == 200 and set(metadata["metadata"]["signature_def"]["signature_def"]) == {
        "serving_default",
        "predict_images",
    }
    assert _get(f"{double.rest_url}/v1/models/nope")[0] == 404
    status, error = _post(url + ":predict", {"instances": [data], "inputs": [data]})
    assert status == 400 and "exactly one of" in error["error"]
    status, error = _post(url + "/versions/7:predict", {"instances": [data]})
    assert status == 404 and error == {"error": "Servable not found for request: Specific(lesions, 7)"}


@pytest.fixture(scope="module")
def bad_cases(inputs):
    image = imageio.read_image(inputs / "IMD004.jpg")[:96, :128]
    return sd.encode(image, "PNG"), sd.bad_inputs(image)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
@pytest.mark.parametrize("case", sd.BAD_INPUT_CASES)
def test_bad_requests_fail_with_invalid_argument_or_work(case, transport, double, bad_cases):
    good, cases = bad_cases
    data, expected = cases[case]
    if transport == "rest":
        url = f"{double.rest_url}/v1/models/lesions:predict"
        encode = lambda items: {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in items]}
        status, answer = _post(url, encode([good, data]))
        if expected is None:
            assert status == 200 and len(answer["predictions"]) == 2
            mask = sd.decode_png(base64.b64decode(answer["predictions"][1]["mask_bytes"]["b64"]))
            assert mask.shape == imageio.to_rgb_array(imageio.decode_pil(data)).shape[:2]
        else:
            assert status == 400 and expected in answer["error"], answer
        status, answer = _post(url, encode([good]))
        assert status == 200 and answer["predictions"][0]["height"] == 96  # the next request still works
    else:
        grpc_client = serving_client.GrpcClient(double.grpc_target, "lesions")
        try:
            if expected is None:
                predictions = grpc_client.predict([good, data])
                assert (predictions[1].height, predictions[1].width) == imageio.to_rgb_array(
                    imageio.decode_pil(data)
                ).shape[:2]
            else:
                with pytest.raises(serving_client.RequestRejected, match=re.escape(expected)):
                    grpc_client.predict([good, data])
            assert grpc_client.predict([good])[0].height == 96
        finally:
            grpc_client.close()
