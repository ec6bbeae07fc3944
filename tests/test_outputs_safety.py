"""No output ever replaces an input, one bad file never stops the others, and one run directory has one
writer (issue 20, classes 2 and 3), checked with real files, real processes and a real full disk.

The rules: kseg replaces a file only if it wrote it (its PNGs carry the ``kseg-output`` marker), a folder of
inputs skips kseg's own outputs, no command writes into the data it reads, a run directory is locked by the
process training into it (released on any exit), a bad input is named and skipped (exit 1) and a full disk
stops the run with one line and no half-written file.
"""

import hashlib
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from kseg import client, evaluate, predict, train
from kseg.core import files, inputs, outputs
from kseg.serving import saved_model_export
from kseg.training import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- helpers ---


def error_line(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def md5s(folder: pathlib.Path) -> dict:
    """Every file below ``folder`` with its MD5: what must not change."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def lesion(seed: int, size=(48, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A small image with a bright disc and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(size) / (3 + seed % 3)) ** 2
    image = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    image[disc] = 220
    return image, (disc * 255).astype(np.uint8)


def save_png(array: np.ndarray, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def folder_dataset(root: pathlib.Path, count: int, split: str | None = None, size=(48, 40)) -> pathlib.Path:
    """``count`` lesion images and masks in ``root/[split/]images`` and ``masks`` (a ``folder:`` dataset)."""
    base = root / split if split else root
    for index in range(count):
        image, mask = lesion(index, size)
        save_png(image, base / "images" / f"{index}.png")
        save_png(mask, base / "masks" / f"{index}.png")
    return root


def bomb_png(path: pathlib.Path, side: int = 40_000) -> pathlib.Path:
    """A 200-byte PNG that claims ``side`` x ``side`` pixels (1.6 gigapixels): Pillow refuses it as a
    decompression bomb when it opens it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def model(trained_synthetic_run) -> str:
    return str(trained_synthetic_run / "best.keras")


@pytest.fixture(scope="module")
def exported(trained_synthetic_run, tmp_path_factory) -> pathlib.Path:
    models = tmp_path_factory.mktemp("exported")
    return saved_model_export.export_model(trained_synthetic_run, models, name="m")


@pytest.fixture
def photos(tmp_path) -> pathlib.Path:
    """A folder of three photos, one of them with the user's own mask beside it (``a_mask.png``)."""
    folder = tmp_path / "photos"
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        image, mask = lesion(seed)
        save_png(image, folder / f"{name}.png")
    save_png(lesion(0)[1], folder / "a_mask.png")
    return folder


# ------------------------------------------------------------------- 2. no output replaces an input ---


@pytest.mark.parametrize("command", ["predict", "client"])
def test_output_dir_equal_to_the_input_folder_never_replaces_a_users_file(command, photos, model, exported, capsys):
    before = md5s(photos)
    run = {
        "predict": lambda: predict.main([str(photos), "--model", model, "--output-dir", str(photos)]),
        "client": lambda: client.main([str(photos), "--saved-model", str(exported), "--output-dir", str(photos)]),
    }[command]

    assert run() == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    prog = f"kseg.{command}"
    # a.png's outputs would replace the user's a_mask.png: a is skipped, named, and its mask kept byte for byte.
    assert f"{prog}: skipped {photos / 'a.png'}: {photos / 'a_mask.png'} exists and kseg did not write it" in err
    assert f"{prog}: 3 of 4 images written" in err  # b, c and the user's a_mask.png itself
    after = md5s(photos)
    assert {name: after[name] for name in before} == before
    assert not (photos / "a_overlay.png").exists()  # neither output of a is written
    for name in ("b", "c", "a_mask"):
        assert outputs.is_kseg_output(photos / f"{name}_mask.png")
        assert outputs.is_kseg_output(photos / f"{name}_overlay.png")

    # The next run over the same folder does not take the first run's outputs as new inputs.
    assert run() == 1
    err = capsys.readouterr().err
    assert f"{prog}: note: {photos}: 6 mask(s) or overlay(s) written by kseg not read as inputs" in err
    assert f"{prog}: 3 of 4 images written" in err
    assert not list(photos.glob("*_mask_mask_mask.png")) and not (photos / "b_mask_mask.png").exists()
    assert {name: md5s(photos)[name] for name in before} == before


def test_kseg_replaces_its_own_outputs(photos, model, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main([str(photos / "b.png"), "--model", model, "--output-dir", str(out)]) == 0
    first = (out / "b_mask.png").stat().st_mtime_ns
    time.sleep(0.01)
    assert predict.main([str(photos / "b.png"), "--model", model, "--output-dir", str(out)]) == 0
    assert (out / "b_mask.png").stat().st_mtime_ns != first
    capsys.readouterr()


def test_train_output_dir_inside_the_dataset_folder_is_refused(tmp_path, capsys):
    dataset = folder_dataset(tmp_path / "data", 4)
    before = md5s(dataset)
    run_dir = dataset / "masks" / "run"
    code = train.main(
        ["--preset", "synthetic-unet", "--dataset", f"folder:{dataset}", "--image-size", "32", "--epochs", "1"]
        + ["--output-dir", str(run_dir)]
    )
    assert code == 2
    line = error_line(capsys.readouterr().err, "kseg.train")
    assert f"--output-dir {run_dir} is inside the dataset folder (folder:{dataset})" in line
    assert md5s(dataset) == before and not run_dir.exists()


def test_evaluate_output_dir_inside_the_dataset_folder_is_refused(tmp_path, model, capsys):
    dataset = tmp_path / "data"
    for split in ("validation", "test"):
        folder_dataset(dataset, 1, split)
    before = md5s(dataset)
    out = dataset / "test" / "masks"
    code = evaluate.main(["--model", model, "--dataset", f"folder:{dataset}", "--output-dir", str(out)])
    assert code == 2
    assert f"--output-dir {out} is inside the dataset folder" in error_line(capsys.readouterr().err, "kseg.evaluate")
    assert md5s(dataset) == before


# ------------------------------------------------------------------------- 2. one writer per run ---


def hold_lock(folder: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (as a training run does) until it is killed."""
    code = (
        "import sys, time\nfrom kseg.core import files\n"
        f"with files.folder_lock({str(folder)!r}, 'a kseg.train run'):\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=open(log, "w"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while "locked" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return process


def test_a_second_training_into_one_run_directory_stops_at_once_and_a_crash_releases_the_lock(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir, tmp_path / "holder.log")
    try:
        started = time.monotonic()
        code = train.main(["--preset", "synthetic-unet", "--output-dir", str(run_dir), "--epochs", "1"])
        assert code == 2 and time.monotonic() - started < 20
        line = error_line(capsys.readouterr().err, "kseg.train")
        assert f"{run_dir} is in use by a kseg.train run (pid {holder.pid}" in line
        assert "wait for it to finish, or choose another folder" in line
        assert sorted(p.name for p in run_dir.iterdir()) == [files.LOCK_FILE]  # nothing of a run was written
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the operating system drops the lock with the process
        holder.wait()
    with files.folder_lock(run_dir, "the test"):
        assert "the test" in (run_dir / files.LOCK_FILE).read_text()


def test_a_refused_command_leaves_no_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "new-run"
    with pytest.raises(RuntimeError), files.folder_lock(run_dir, "the test"):
        raise RuntimeError("a check failed")
    assert not run_dir.exists()


# ------------------------------------------------------------------ 3. one bad file never stops others ---


def test_predict_names_and_skips_a_bomb_and_predicts_a_1x1_image_and_a_240_character_name(tmp_path, model, capsys):
    folder = tmp_path / "in"
    save_png(lesion(0)[0], folder / "fine.png")
    save_png(np.full((1, 1, 3), 200, np.uint8), folder / "dot.png")
    long_name = "p" * 240 + ".png"
    save_png(lesion(1)[0], folder / long_name)
    bomb_png(folder / "bomb.png")
    out = tmp_path / "out"

    assert predict.main([str(folder), "--model", model, "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    skipped = [line for line in err.splitlines() if line.startswith("kseg.predict: skipped")]
    assert len(skipped) == 1 and str(folder / "bomb.png") in skipped[0], err
    assert "kseg.predict: 3 of 4 images written" in err
    assert np.asarray(Image.open(out / "dot_mask.png")).shape == (1, 1)
    assert np.asarray(Image.open(out / "fine_mask.png")).shape == (48, 40)
    long_outputs = sorted(p.name for p in out.iterdir() if p.name.startswith("ppp"))
    assert len(long_outputs) == 2 and all(len(name.encode()) <= 255 - 14 for name in long_outputs)
    assert not list(out.glob(".*.tmp"))


def test_output_names_too_long_for_the_file_system_are_cut_and_stay_distinct():
    a, b = "q" * 250 + "a.png", "q" * 250 + "b.png"
    stems = inputs.output_stems([a, b, "short.png"])
    assert stems[2] == "short" and stems[0] != stems[1]
    assert all(len(stem.encode()) <= inputs.MAX_STEM_BYTES for stem in stems)
    assert stems[0].startswith("q" * 200)


@pytest.fixture
def small_disk(tmp_path):
    """A real 300 KiB file system (tmpfs; mounting needs root), or a skip where it cannot be made."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_stops_predict_with_one_line_and_no_half_written_file(tmp_path, model, small_disk, capsys):
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    for index in range(12):  # noisy 160x160 images: overlays of ~75 KiB each, so the disk fills after a few
        save_png(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8), folder / f"{index:02d}.png")
    out = small_disk / "out"

    assert predict.main([str(folder), "--model", model, "--output-dir", str(out), "--batch-size", "2"]) == 1
    line = error_line(capsys.readouterr().err, "kseg.predict")
    assert f"the disk of {out} is full" in line and "Free some space and run again" in line
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert 0 < len(names) < 24, names
    for path in out.iterdir():  # every file left is a whole PNG
        Image.open(path).load()


# -------------------------------------------------------------------------------- 7. clear at once ---


@pytest.mark.parametrize("server", ["file:///etc/passwd", "ftp://localhost:21"])
def test_client_refuses_a_server_address_that_is_not_http_at_once(server, photos, tmp_path, capsys):
    started = time.monotonic()
    out = tmp_path / "out"
    assert client.main([str(photos), "--server", server, "--model", "m", "--output-dir", str(out)]) == 2
    assert time.monotonic() - started < 5
    line = error_line(capsys.readouterr().err, "kseg.client")
    assert f"--server '{server}': expected TF Serving's REST address, http://HOST:PORT" in line
    assert not out.exists()


def test_training_without_a_validation_split_keeps_the_last_epoch_and_draws_its_curves(tmp_path, capsys):
    dataset = tmp_path / "data"
    for split, count in (("train", 8), ("test", 2)):
        folder_dataset(dataset, count, split, size=(32, 32))
    run_dir = tmp_path / "run"
    code = train.main(
        ["--preset", "synthetic-unet", "--dataset", f"folder:{dataset}", "--image-size", "32", "--epochs", "2"]
        + ["--batch-size", "4", "--output-dir", str(run_dir)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "has no validation split: best.keras will be the last epoch's model" in captured.err
    assert (run_dir / "curves.png").exists() and (run_dir / "metrics.json").exists()
    state = checkpoints.read_state(run_dir / "checkpoints")
    assert state.epoch == 2 and state.best_epoch == 1  # the second (last) epoch, counted from 0
    # best.keras holds the last epoch's weights (it used to stay at the first epoch's).
    best = keras.models.load_model(run_dir / "best.keras", compile=False)
    last = keras.models.load_model(run_dir / "best.keras", compile=False)
    last.load_weights(run_dir / "checkpoints" / state.weights)
    for got, want in zip(best.get_weights(), last.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_client_sends_a_phone_photo_upright_so_its_mask_fits_the_photo_as_viewers_show_it(exported, tmp_path, capsys):
    image, _ = lesion(4, size=(48, 40))  # stored 40 wide, 48 high; EXIF orientation 6 shows it 48 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "in" / "phone.jpg"
    photo.parent.mkdir()
    Image.fromarray(image).save(photo, exif=exif.tobytes(), quality=95)
    out = tmp_path / "out"

    assert client.main([str(photo), "--saved-model", str(exported), "--output-dir", str(out)]) == 0, capsys.readouterr()
    assert np.asarray(Image.open(out / "phone_mask.png")).shape == (40, 48)
    assert np.asarray(Image.open(out / "phone_overlay.png")).shape == (40, 48, 3)


def test_commands_show_their_own_lines_and_verbose_brings_the_libraries_back(synthetic_data_dir, tmp_path):
    """Class 7, noise: by default a command prints kseg's lines only (no TensorFlow C++ start-up lines, no absl
    or Apache Beam warnings); ``--verbose`` shows what the libraries say."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def show(*extra):
        args = ["tfds_ph2/synthetic", "--data-dir", synthetic_data_dir, "-n", "2", "--out", tmp_path / "s.png"]
        done = subprocess.run(
            [sys.executable, "-m", "kseg.show", *map(str, args), *extra], cwd=REPO, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode(), done.stderr.decode()

    out, err = show()
    assert out.strip() == f"wrote {tmp_path / 's.png'} (2 examples of tfds_ph2/synthetic train)"
    assert err == "", err
    _, verbose_err = show("--verbose")
    assert "absl" in verbose_err or "I0000" in verbose_err, verbose_err  # TensorFlow's own start-up lines


def test_show_save_images_never_replaces_a_users_file_and_its_images_stay_inputs(synthetic_data_dir, tmp_path, capsys):
    from kseg import show

    folder = tmp_path / "images"
    args = ["tfds_ph2/synthetic", "--data-dir", synthetic_data_dir, "-n", "2", "--out", str(tmp_path / "g.png")]
    assert show.main([*args, "--save-images", str(folder)]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and all(n.endswith(".png") for n in names)
    assert inputs.collect_image_files([folder]).files  # images to predict on, not outputs to skip
    assert show.main([*args, "--save-images", str(folder)]) == 0  # kseg replaces its own images
    capsys.readouterr()

    (folder / names[0]).write_bytes(b"the user's own file")
    assert show.main([*args, "--save-images", str(folder)]) == 2
    line = error_line(capsys.readouterr().err, "kseg.show")
    assert f"{folder / names[0]} exists and kseg did not write it" in line
    assert (folder / names[0]).read_bytes() == b"the user's own file"


def test_safe_stems_never_leave_the_folder():
    assert outputs.safe_stem("../../etc/passwd") == "_.._etc_passwd"
    assert outputs.safe_stem("...") == "image" and outputs.safe_stem("a b/c") == "a_b_c"


def test_show_never_writes_into_the_folder_dataset_it_reads(tmp_path, capsys):
    from kseg import show

    dataset = folder_dataset(tmp_path / "data", 2)
    before = md5s(dataset)
    for flags in (["--out", str(dataset / "images" / "grid.png")], ["--save-images", str(dataset / "images")]):
        assert show.main([f"folder:{dataset}", "--split", "all", *flags]) == 2
        assert "is inside the dataset folder" in error_line(capsys.readouterr().err, "kseg.show")
    assert md5s(dataset) == before
