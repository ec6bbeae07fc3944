"""The faults of issue 11 that were fixed in the commands, one test per case, with real files, real processes
and real signals.

The rule every command follows: a bad input gets ONE line ``kseg.<cmd>: error: ...`` naming the file or flag
and what was expected; the exit status is 2 for wrong flags, paths or inputs, 1 when the job failed, 130 when
interrupted; there is no traceback, and nothing already written is lost or left half-written.

Most tests call a command's ``main(argv)`` in this process (quick, and stderr is what a user sees); the
Ctrl-C tests start ``python -m kseg.<cmd>`` and send it a real SIGINT once work has visibly started.
"""

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import serving_double as sd
import tensorflow as tf
from PIL import Image

from kseg import client, evaluate, export, predict, show, train
from kseg.core import files, imageio, outputs
from kseg.core.errors import TrainingDivergedError
from kseg.prediction import inference
from kseg.serving import saved_model_export, serving_client
from kseg.training import callbacks, checkpoints
from tfds_ph2 import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
#: The arguments conftest's ``trained_synthetic_run`` was trained with (its --output-dir aside).
TRAINED_ARGS = ["--preset", "synthetic-unet", "--image-size", "64", "--epochs", "8", "--seed", "0"]


# ----------------------------------------------------------------------------------------- helpers ---


def error_line(err: str, prog: str) -> str:
    """The one line a refused command prints: ``prog: error: ...``, alone on stderr, without a traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def small_image(index: int, size=(72, 56)) -> np.ndarray:
    """A small synthetic lesion image (each index a different lesion, so different masks)."""
    image = synthetic.generate_example(index)["image"]
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def save(image: np.ndarray, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def written_count(err: str, prog: str) -> tuple[int, int]:
    match = re.search(rf"{prog}: (\d+) of (\d+) images written", err)
    assert match, err
    return int(match.group(1)), int(match.group(2))


def colliding_inputs(root: pathlib.Path) -> tuple[list[str], dict[str, pathlib.Path]]:
    """Inputs whose plain names collide, and the output stem each distinct file must get.

    ``dir/x.jpg`` + ``dir/x.png`` (same stem), ``site1/images/case.jpg`` + ``site2/images/case.jpg`` (same
    name, different folders), and a folder ``both/`` given together with a file inside it (read once)."""
    files = {
        "x_jpg": save(small_image(1), root / "dir" / "x.jpg"),
        "x_png": save(small_image(2), root / "dir" / "x.png"),
        "site1_images_case_jpg": save(small_image(3), root / "site1" / "images" / "case.jpg"),
        "site2_images_case_jpg": save(small_image(4), root / "site2" / "images" / "case.jpg"),
        "y": save(small_image(5), root / "both" / "y.png"),
        "z": save(small_image(6), root / "both" / "z.png"),
    }
    args = [
        str(files["x_jpg"]),
        str(files["x_png"]),
        str(files["site1_images_case_jpg"]),
        str(files["site2_images_case_jpg"]),
        str(root / "both"),
        str(files["y"]),
    ]
    return args, files


def check_no_overwrites(out: pathlib.Path, err: str, prog: str, files: dict, expected: dict):
    """Every distinct file has its own mask and overlay, the summary counts exactly those, and each mask is
    the one its own input gives (an overwrite would leave another input's mask under its name)."""
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in files for kind in ("mask", "overlay")
    )
    assert written_count(err, prog) == (len(files), len(files))
    for stem in files:
        written = outputs.decode_mask_png((out / f"{stem}_mask.png").read_bytes(), binary=True)
        np.testing.assert_array_equal(written, expected[stem], err_msg=stem)
    # The colliding inputs really give different masks, so an overwrite could not go unnoticed.
    for a, b in [("x_jpg", "x_png"), ("site1_images_case_jpg", "site2_images_case_jpg")]:
        assert not np.array_equal(expected[a], expected[b]), (a, b)


@contextlib.contextmanager
def unwritable_folder(path: pathlib.Path):
    """``path`` as a folder no file can be added to. A user gets read-only permissions; root ignores those,
    so root gets the immutable attribute (``chattr +i``: ext4 and similar, with CAP_LINUX_IMMUTABLE), or a
    skip where neither works."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("root cannot make a folder unwritable here (no chattr +i: file system or capability)")
    try:
        with pytest.raises(PermissionError):
            (path / "probe").write_text("x")
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def start_command(module: str, args, log_dir: pathlib.Path) -> subprocess.Popen:
    """``python -m module args`` with stdout and stderr in files (a full pipe would stall the command)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # A test run started in the background has SIGINT ignored, children inherit that, and Python installs its
    # Ctrl-C handler only where SIGINT is at its default: restore the default for the child.
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        with open(log_dir / "stdout", "w") as stdout, open(log_dir / "stderr", "w") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, stdout=stdout, stderr=stderr
            )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupt_when(process: subprocess.Popen, started, what: str, timeout: float = 240) -> None:
    """Send SIGINT as soon as ``started()`` is true; fail if the command ended first."""
    deadline = time.monotonic() + timeout
    while not started():
        assert process.poll() is None, f"the command ended (status {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no sign of {what} within {timeout} s"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)


def interrupted_line(log_dir: pathlib.Path, process: subprocess.Popen, prog: str) -> str:
    """After SIGINT: exit status 130, no traceback, and one line saying it was interrupted and what was kept."""
    err = (log_dir / "stderr").read_text()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: interrupted; "), err[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------- shared set-up ---


@pytest.fixture(scope="module")
def predictor(trained_synthetic_run):
    return inference.load_predictor(trained_synthetic_run)


@pytest.fixture(scope="module")
def exported_model(trained_synthetic_run, tmp_path_factory) -> pathlib.Path:
    """The trained model exported once (``MODELS/m/1``); the model folder ``MODELS/m`` is returned."""
    models = tmp_path_factory.mktemp("exported")
    saved_model_export.export_model(trained_synthetic_run, models, name="m")
    return models / "m"


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> str:
    """``folder:PATH`` with 4 validation and 4 test images (72x56), so that choosing post-processing and
    scoring take seconds."""
    root = tmp_path_factory.mktemp("small-dataset")
    for split, first in (("validation", 300), ("test", 310)):
        for index in range(first, first + 4):
            example = synthetic.generate_example(index)
            save(
                np.asarray(Image.fromarray(example["image"]).resize((72, 56), Image.BILINEAR)),
                root / split / "images" / f"{index}.png",
            )
            mask = Image.fromarray(example["segmentation_mask"][..., 0] * 255).resize((72, 56), Image.NEAREST)
            save(np.asarray(mask), root / split / "masks" / f"{index}.png")
    return f"folder:{root}"


@pytest.fixture
def truncated_model(trained_synthetic_run, tmp_path) -> pathlib.Path:
    """A copy of best.keras cut in half, as an interrupted copy or download leaves it."""
    data = (trained_synthetic_run / "best.keras").read_bytes()
    path = tmp_path / "cut" / "best.keras"
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def a_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "results"
    path.write_text("an existing file where an output folder was meant to go")
    return path


# ------------------------------------------------------------------------------------- kseg.predict ---


def test_predict_colliding_names_each_get_their_own_files(predictor, trained_synthetic_run, tmp_path, capsys):
    """Case 1. --batch-size 1 so that each mask can be compared exactly with its input predicted alone."""
    args, files = colliding_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = predict.main([*args, "--model", str(trained_synthetic_run), "--output-dir", str(out), "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    expected = {stem: predictor.predict([imageio.read_image(path)], batch_size=1)[0] for stem, path in files.items()}
    check_no_overwrites(out, err, "kseg.predict", files, expected)


def test_predict_output_dir_that_is_a_file_is_refused_before_the_model_loads(a_file, tmp_path, capsys):
    """Case 9: the model path does not exist either; the output folder is checked first."""
    save(small_image(1), tmp_path / "a.png")
    code = predict.main([str(tmp_path / "a.png"), "--model", str(tmp_path / "no-model"), "--output-dir", str(a_file)])
    line = error_line(capsys.readouterr().err, "kseg.predict")
    assert code == 2
    assert line == f"kseg.predict: error: --output-dir {a_file} is an existing file, not a folder; choose a folder"


def test_predict_truncated_keras_file_is_not_a_keras_archive(truncated_model, tmp_path, capsys):
    """Case 16: a cut .keras file is named as such, not "File not found"."""
    save(small_image(1), tmp_path / "a.png")
    code = predict.main([str(tmp_path / "a.png"), "--model", str(truncated_model), "--output-dir", str(tmp_path / "o")])
    line = error_line(capsys.readouterr().err, "kseg.predict")
    assert code == 2
    assert line.startswith(f"kseg.predict: error: {truncated_model}: not a .keras archive")
    assert "truncated or corrupt" in line and "not found" not in line.lower()
    assert not (tmp_path / "o").exists()


def test_predict_names_what_it_skips_in_a_folder_and_recursive_reads_subfolders(
    trained_synthetic_run, tmp_path, capsys
):
    """Case 16: a subfolder of images and a .txt file are not silently ignored; --recursive reads the subfolder."""
    folder = tmp_path / "in"
    save(small_image(1), folder / "a.png")
    save(small_image(2), folder / "sub" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    model = ["--model", str(trained_synthetic_run)]

    code = predict.main([str(folder), *model, "--output-dir", str(tmp_path / "flat")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"kseg.predict: note: {folder}: 1 subfolder(s) not read (e.g. sub/); add --recursive to include them" in err
    assert (
        f"kseg.predict: note: {folder}: 1 file(s) without an image suffix not read (e.g. notes.txt); images "
        f"end in " in err
    )
    assert written_count(err, "kseg.predict") == (1, 1)
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["a_mask.png", "a_overlay.png"]

    code = predict.main([str(folder), *model, "--output-dir", str(tmp_path / "deep"), "--recursive"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "subfolder(s) not read" not in err and "1 file(s) without an image suffix not read" in err
    assert written_count(err, "kseg.predict") == (2, 2)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == [
        "a_mask.png",
        "a_overlay.png",
        "b_mask.png",
        "b_overlay.png",
    ]


def test_predict_ctrl_c_leaves_only_whole_pngs(ph2_dir, trained_synthetic_run, tmp_path):
    """Cases 11 and 14: SIGINT once the first PNG is there; every PNG left opens fully, no temporary file."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = sd.ph2_image_paths(ph2_dir)[0]
    for i in range(40):
        shutil.copy(source, inputs / f"lesion{i:02d}.bmp")
    out = tmp_path / "out"
    process = start_command(
        "kseg.predict",
        [inputs, "--model", trained_synthetic_run, "--output-dir", out, "--batch-size", "2"],
        tmp_path / "log",
    )
    interrupt_when(process, lambda: out.is_dir() and any(out.glob("*_mask.png")), "the first mask")
    line = interrupted_line(tmp_path / "log", process, "kseg.predict")
    assert line == (
        f"kseg.predict: interrupted; the masks and overlays already in {out} are complete (none is "
        f"half-written); run again to do them all"
    )
    pngs = sorted(out.glob("*.png"))
    assert 0 < len(pngs) < 80, "interrupted mid-work"
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # raises on a truncated file
    assert not [p.name for p in out.iterdir() if p.suffix != ".png"], "a temporary file was left"
    assert not list(out.glob(".*.tmp"))


# -------------------------------------------------------------------------------------- kseg.client ---


def test_client_colliding_names_each_get_their_own_files(exported_model, tmp_path, capsys):
    """Case 1 through the export run in process (--saved-model); each mask equals its input sent alone."""
    args, files = colliding_inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = client.main(
        [*args, "--saved-model", str(exported_model), "--out", str(out), "--reencode", "--batch-size", "1"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    local = serving_client.LocalClient(exported_model)
    expected = {}
    for stem, path in files.items():
        prediction = local.predict([serving_client.read_input(path, reencode=True)[1]])[0]
        expected[stem] = serving_client.decode_mask(prediction, str(path))[0]
    check_no_overwrites(out, err, "kseg.client", files, expected)


class HalfAnswerServer:
    """A "server" on 127.0.0.1 that reads each request whole, starts a 200 answer of 1000 bytes, sends five
    and closes the connection (a server that crashed or restarted mid-answer). Bounded: at most ``limit``
    connections, each with a timeout, and it stops when closed or after a minute."""

    ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"pre'

    def __init__(self, limit: int = 4):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)  # accept() wakes up to see whether the test closed the server
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.requests = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(limit,), daemon=True)
        self.thread.start()

    def _serve(self, limit):
        deadline = time.monotonic() + 60
        while self.requests < limit and not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                while length and len(body) < int(length.group(1)):  # read it all: unread bytes make a reset
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                self.requests += 1
                connection.sendall(self.ANSWER)

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=10)
        self.socket.close()


def test_client_server_closing_mid_answer_is_one_line(tmp_path, capsys):
    """Case 12: an answer cut short is a clear error (exit 2), not an http.client traceback."""
    image = save(small_image(1), tmp_path / "a.png")
    server = HalfAnswerServer()
    try:
        code = client.main(
            [str(image), "--server", server.url, "--model", "m", "--out", str(tmp_path / "out"), "--timeout", "30"]
        )
    finally:
        server.close()
    line = error_line(capsys.readouterr().err, "kseg.client")
    assert code == 2 and server.requests == 1
    assert line == (
        f"kseg.client: error: {server.url} closed the connection before its answer was complete "
        f"(IncompleteRead); is it a TF Serving REST port, and did the server restart? Try again, or a "
        f"smaller --batch-size"
    )
    assert not (tmp_path / "out").exists()


def test_client_probabilities_signature_in_process_is_one_short_line(exported_model, tmp_path, capsys):
    """Case 12: --signature predict_images (float images in) names the signature and its inputs, briefly."""
    image = save(small_image(1), tmp_path / "a.png")
    code = client.main(
        [
            str(image),
            "--saved-model",
            str(exported_model),
            "--signature",
            "predict_images",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    line = error_line(err, "kseg.client")
    assert code == 2 and len(err) < 1000
    assert line == (
        f"kseg.client: error: {exported_model / '1'}: signature 'predict_images' takes ['images'], not "
        f"encoded images; kseg.client sends them to a signature with one 'image_bytes' input, such as "
        f"'serving_default'"
    )
    assert not (tmp_path / "out").exists()


def test_client_probabilities_signature_over_rest_is_one_short_line(exported_model, tmp_path, capsys):
    """Case 12 over REST (the TF Serving double): the request is refused as a whole, once, without image bytes."""
    images = [save(small_image(i), tmp_path / "in" / f"{i}.png") for i in (1, 2)]
    server = sd.ServingDouble({"m": exported_model}).start(grpc_server=False)
    try:
        code = client.main(
            [
                *map(str, images),
                "--server",
                server.rest_url,
                "--model",
                "m",
                "--signature",
                "predict_images",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    finally:
        server.stop()
    err = capsys.readouterr().err
    line = error_line(err, "kseg.client")
    assert code == 2 and len(err) < 1000
    assert line.startswith(f"kseg.client: error: {server.rest_url}/v1/models/m:predict rejected the request: ")
    assert "'image_bytes'" in line and "['images']" in line and "--signature 'predict_images'" in line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- kseg.show ---


@pytest.mark.parametrize("count", ["-3", "0"])
def test_show_count_below_one_is_one_line(count, synthetic_data_dir, tmp_path, capsys):
    """Cases 4 (-n -3) and 13 (-n 0): refused by the flag's own check before any data is read, nothing written."""
    with pytest.raises(SystemExit) as exit_info:
        show.main(
            ["tfds_ph2/synthetic", "--data-dir", synthetic_data_dir, "-n", count, "--out", str(tmp_path / "g.png")]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"python -m kseg.show: error: argument -n/--count: expected an integer in [1, 100], got '{count}'"
    )
    assert not list(tmp_path.iterdir())


def test_show_out_without_png_suffix_writes_and_reports_name_png(synthetic_data_dir, tmp_path, capsys):
    """Case 4: --out NAME writes NAME.png and says so (the path it reports is the file that exists)."""
    code = show.main(
        ["tfds_ph2/synthetic", "--data-dir", synthetic_data_dir, "-n", "2", "--out", str(tmp_path / "grid")]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {tmp_path / 'grid.png'} (2 examples of tfds_ph2/synthetic train)" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    with Image.open(tmp_path / "grid.png") as image:
        assert image.format == "PNG"


@pytest.mark.parametrize("flag", ["--save-images", "--out"])
def test_show_output_in_an_existing_file_is_refused_before_reading_data(flag, a_file, tmp_path, capsys):
    """Case 9: the dataset does not exist either; the output folder is checked first."""
    value = str(a_file) if flag == "--save-images" else str(a_file / "grid.png")
    code = show.main(
        [
            f"folder:{tmp_path / 'no-data'}",
            flag,
            value,
            *([] if flag == "--out" else ["--out", str(tmp_path / "g.png")]),
        ]
    )
    line = error_line(capsys.readouterr().err, "kseg.show")
    assert code == 2
    assert line == f"kseg.show: error: {flag} {a_file} is an existing file, not a folder; choose a folder"


# -------------------------------------------------------------------------------------- kseg.export ---


def test_export_removes_staging_left_by_a_killed_export(trained_synthetic_run, tmp_path, capsys):
    """Case 15: a staging folder whose export process is gone is removed (with a warning); one in the old
    naming (no pid) is named and left; one whose process still runs is left alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now belongs to no process
    model_dir = tmp_path / "models" / "m"
    stale = model_dir / f".export-3-{gone.pid}-abcd1234"
    old_style = model_dir / ".export-2-abcd1234"
    running = model_dir / f".export-4-{os.getpid()}-abcd1234"
    for folder in (stale, old_style, running):
        (folder / "variables").mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"half")

    code = export.main(["--model", str(trained_synthetic_run), "--export-dir", str(tmp_path / "models"), "--name", "m"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"kseg.export: warning: removed {stale}, left by an export that was killed before it finished" in err
    assert (
        f"kseg.export: warning: {old_style} looks like the staging folder of an unfinished export; TF Serving "
        f"ignores it. Remove it if no export is running"
    ) in err
    assert str(running) not in err and "Traceback" not in err
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(["1", old_style.name, running.name])


def test_export_ctrl_c_leaves_no_version_and_no_staging_folder(trained_synthetic_run, tmp_path):
    """Case 11: SIGINT while the SavedModel is being staged; nothing is left for TF Serving to load."""
    model_dir = tmp_path / "models" / "m"
    process = start_command(
        "kseg.export",
        ["--model", trained_synthetic_run, "--export-dir", tmp_path / "models", "--name", "m"],
        tmp_path / "log",
    )
    interrupt_when(process, lambda: model_dir.is_dir() and any(model_dir.glob(".export-*")), "a staging folder")
    line = interrupted_line(tmp_path / "log", process, "kseg.export")
    assert line == "kseg.export: interrupted; no version was written (the partial export was removed)"
    assert not model_dir.exists() and not (tmp_path / "models").exists()  # the folders it created go too


# ------------------------------------------------------------------------------------ kseg.evaluate ---


def test_evaluate_output_dir_that_is_a_file_is_refused_before_the_model_loads(a_file, tmp_path, capsys):
    """Case 9: the model path does not exist either; the output folder is checked first."""
    code = evaluate.main(["--model", str(tmp_path / "no-model"), "--output-dir", str(a_file)])
    line = error_line(capsys.readouterr().err, "kseg.evaluate")
    assert code == 2
    assert line == f"kseg.evaluate: error: --output-dir {a_file} is an existing file, not a folder; choose a folder"


def test_evaluate_keeps_the_chosen_postprocessing_when_the_model_folder_cannot_take_it(
    trained_synthetic_run, small_dataset, tmp_path, capsys
):
    """Case 10: the choice took minutes to find; when the model's folder cannot take it, it goes to
    --output-dir, with a warning saying where, and the model folder is left as it was."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_synthetic_run, run_dir)
    out = tmp_path / "out"
    with unwritable_folder(run_dir):
        code = evaluate.main(
            ["--model", str(run_dir), "--dataset", small_dataset, "--output-dir", str(out), "--choose-postprocessing"]
        )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("kseg.evaluate: warning: ")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"kseg.evaluate: warning: cannot write {run_dir / 'best.postprocessing.json'} (")
    assert (
        f"the choice is kept in {out / 'best.postprocessing.json'}: copy it next to {run_dir / 'best.keras'}"
        in warnings[0]
    )
    kept = json.loads((out / "best.postprocessing.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert kept["chosen_on"] == f"{small_dataset} validation (4 images)"
    assert {k: kept[k] for k in summary["postprocessing"]} == summary["postprocessing"]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in trained_synthetic_run.iterdir())


def test_evaluate_truncated_keras_file_is_not_a_keras_archive(truncated_model, synthetic_data_dir, tmp_path, capsys):
    """Case 16."""
    code = evaluate.main(
        [
            "--model",
            str(truncated_model),
            "--dataset",
            "tfds_ph2/synthetic",
            "--data-dir",
            synthetic_data_dir,
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    line = error_line(capsys.readouterr().err, "kseg.evaluate")
    assert code == 2
    assert line.startswith(f"kseg.evaluate: error: {truncated_model}: not a .keras archive")
    assert "not found" not in line.lower()
    assert not (tmp_path / "out").exists()


def test_evaluate_unknown_split_leaves_no_output_folder(trained_synthetic_run, synthetic_data_dir, tmp_path, capsys):
    """Case 16: --split testing (not a split) is exit 2, and no empty --output-dir is left behind."""
    out = tmp_path / "out"
    code = evaluate.main(
        [
            "--model",
            str(trained_synthetic_run),
            "--dataset",
            "tfds_ph2/synthetic",
            "--data-dir",
            synthetic_data_dir,
            "--split",
            "testing",
            "--output-dir",
            str(out),
        ]
    )
    line = error_line(capsys.readouterr().err, "kseg.evaluate")
    assert code == 2
    assert "'testing'" in line and "test" in line
    assert not out.exists()


# ----------------------------------------------------------------------------------------- kseg.train ---


def test_train_rerunning_a_finished_run_changes_nothing(trained_synthetic_run, synthetic_data_dir, tmp_path, capsys):
    """Case 3: the same command again reports the finished run; metrics.json (train_seconds too) is kept."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_synthetic_run, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code = train.main([*TRAINED_ARGS, "--data-dir", synthetic_data_dir, "--output-dir", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"kseg.train: {run_dir} is a finished run (8 of 8 epochs); its metrics.json is kept as it is" in captured.out
    assert (run_dir / "metrics.json").read_bytes() == before[pathlib.Path("metrics.json")]
    assert json.loads((run_dir / "metrics.json").read_text())["train_seconds"] > 0
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    lock = pathlib.Path(files.LOCK_FILE)  # names the last process that held the run directory, nothing else
    assert {k: v for k, v in after.items() if k != lock} == {k: v for k, v in before.items() if k != lock}


def test_train_config_that_is_a_folder(tmp_path, capsys):
    """Case 16."""
    code = train.main(["--config", str(tmp_path)])
    line = error_line(capsys.readouterr().err, "kseg.train")
    assert code == 2
    assert line == f"kseg.train: error: --config {tmp_path} is a folder; expected a .json or .yaml file"


def test_train_image_size_that_is_not_a_size(tmp_path, capsys):
    """Case 16: the message names the flag."""
    code = train.main(["--image-size", "abc", "--output-dir", str(tmp_path / "run")])
    line = error_line(capsys.readouterr().err, "kseg.train")
    assert code == 2
    assert (
        line.startswith(
            "kseg.train: error: image_size (--image-size): expected a size like 256 or HxW like 192x256, got "
        )
        and "abc" in line
    )
    assert not (tmp_path / "run").exists()


def test_train_nan_before_any_epoch_says_nothing_was_saved(tmp_path):
    """Case 16: with no finished epoch there is no checkpoint to point to."""
    message = str(callbacks.diverged_error(float("nan"), 0, 2, tmp_path, checkpoints.RunState()))
    assert message == (
        "loss became nan in epoch 1, batch 3; stopped. No epoch had finished, so nothing was saved. "
        "Try a lower --learning-rate, or --no-mixed-precision."
    )

    model = keras.Sequential([keras.Input((4, 4, 3), name="image"), keras.layers.Conv2D(1, 1, name="logits")])
    model.compile("adam", "mse")
    state = checkpoints.RunState()
    hooks = [
        callbacks.StopOnNaN(tmp_path, state),
        callbacks.TrainTimer(state, 4),
        checkpoints.EpochCheckpoint(tmp_path / "checkpoints", tmp_path / "best.keras", state),
    ]
    bad = np.full((4, 4, 4, 3), np.nan, np.float32)
    batches = tf.data.Dataset.from_tensor_slices(bad).map(lambda x: (x, x[..., :1])).batch(2)
    with pytest.raises(
        TrainingDivergedError,
        match=r"loss became nan in epoch 1, batch 1; stopped\. No epoch had "
        r"finished, so nothing was saved\.",
    ):
        model.fit(batches.repeat(), epochs=2, steps_per_epoch=2, callbacks=hooks, verbose=0, shuffle=False)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "best.keras").exists()


@pytest.mark.slow
def test_train_ctrl_c_keeps_finished_epochs_and_the_same_command_resumes(synthetic_data_dir, tmp_path):
    """Case 11: SIGINT after the first checkpoint; one line says which epoch is kept; the same command resumes."""
    run_dir = tmp_path / "run"
    args = [
        "--preset",
        "synthetic-unet",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--seed",
        "1",
        "--epochs",
        "6",
        "--steps-per-epoch",
        "3",
        "--data-dir",
        synthetic_data_dir,
        "--output-dir",
        run_dir,
    ]
    process = start_command("kseg.train", args, tmp_path / "log")
    interrupt_when(process, lambda: checkpoints.read_state(run_dir / "checkpoints").epoch >= 1, "a finished epoch")
    line = interrupted_line(tmp_path / "log", process, "kseg.train")
    kept = checkpoints.read_state(run_dir / "checkpoints").epoch
    assert 1 <= kept < 6
    assert line == (
        f"kseg.train: interrupted; epoch {kept} of 6 is the last one kept in {run_dir}/checkpoints; run "
        f"the same command again to resume from there"
    )

    again = subprocess.run(
        [sys.executable, "-m", "kseg.train", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"kseg.train: resuming {run_dir} after epoch {kept} of 6" in again.stdout
    assert checkpoints.read_state(run_dir / "checkpoints").epoch == 6 and (run_dir / "metrics.json").exists()
