"""``python -m kseg.train``: config resolution, a real short run, resume after SIGKILL, NaN, bad output
dirs, and mirrored and multi-worker distribution in separate processes."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kseg import train
from kseg.core import errors
from kseg.training import callbacks, checkpoints, config, history, setup

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--preset", "synthetic-unet", "--image-size", "32", "--batch-size", "8", "--seed", "1"]


def _run_cli(args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "kseg.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def _history(run_dir):
    return history.read_history(run_dir / "history.csv")


# ------------------------------------------------------------------------------------------ config ---


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--preset",
        "--dataset",
        "--model",
        "--image-size",
        "--batch-size",
        "--epochs",
        "--learning-rate",
        "--loss",
        "--seed",
        "--output-dir",
        "--manual-dir",
        "--data-dir",
        "--strategy",
        "--mixed-precision",
        "--jit-compile",
        "--config",
        "--augmentation",
        "--warmup-epochs",
    ):
        assert flag in text


def test_preset_then_file_then_flags(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("preset: ph2-segnet\nepochs: 7\nlearning-rate: 0.01\n")
    resolved, _ = train.config_from_args(["--config", str(yaml_file), "--epochs", "9"])
    assert (resolved.preset, resolved.model_preset, resolved.epochs, resolved.learning_rate) == (
        "ph2-segnet",
        "segnet",
        9,
        0.01,
    )
    default, _ = train.config_from_args([])
    assert default.preset == "ph2-unet-lite0" and default.dataset == "tfds_ph2/ph2"


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(config.ConfigError, match="loss: expected one of"):
        config.resolve(overrides={"loss": "hinge"})
    with pytest.raises(config.ConfigError, match="image_size"):
        config.resolve(overrides={"image_size": "8"})
    bad = tmp_path / "c.json"
    bad.write_text('{"epochz": 3}')
    with pytest.raises(config.ConfigError, match=r"unknown field\(s\) \['epochz'\]"):
        config.read_config_file(bad)


def test_missing_ph2_stops_with_instructions(tmp_path, capsys):
    assert train.main(["--data-dir", str(tmp_path / "tfds"), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "tfds_ph2/ph2 is not built" in err and "PH2Dataset.rar" in err and "synthetic-unet" in err
    assert "Traceback" not in err


def test_unwritable_output_dir_is_reported_before_training(tmp_path, synthetic_data_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = train.main([*TINY, "--data-dir", synthetic_data_dir, "--output-dir", str(blocker / "run"), "--epochs", "1"])
    assert code == 2
    assert "is not writable" in capsys.readouterr().err
    assert not (tmp_path / "file" / "run").exists()


# ------------------------------------------------------------------------------------------ training ---


def test_short_run_learns_synthetic_and_writes_run_dir(trained_synthetic_run):
    run_dir = trained_synthetic_run  # synthetic-unet, 64x64, 8 epochs, seed 0 (see conftest)
    for name in (
        "config.json",
        "best.keras",
        "history.csv",
        "curves.png",
        "predictions.png",
        "metrics.json",
        "checkpoints/state.json",
    ):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"dice", "iou", "sensitivity", "specificity"}
    assert metrics["validation"]["images"] == 50 and metrics["test"]["images"] == 50
    assert metrics["test"]["dice"] > 0.85  # learns the synthetic lesions (about 0.89 here)
    assert metrics["images_per_second"] > 0 and metrics["train_seconds"] > 0
    history = _history(run_dir)
    assert [int(r["epoch"]) for r in history] == list(range(8))
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    assert json.loads((run_dir / "config.json").read_text())["image_size"] == [64, 64]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 3), name="image"), keras.layers.Conv2D(1, 1, name="logits")])
    model.compile("adam", "mse", metrics=[])
    state = checkpoints.RunState()
    hooks = [
        callbacks.StopOnNaN(tmp_path, state),
        callbacks.TrainTimer(state, 4),
        checkpoints.EpochCheckpoint(tmp_path / "checkpoints", tmp_path / "best.keras", state),
    ]
    good = np.ones((4, 4, 4, 3), np.float32)
    bad = np.full_like(good, np.nan)
    batches = tf.data.Dataset.from_tensor_slices(np.stack([good, good, bad, bad])).map(lambda x: (x, x[..., :1]))
    with pytest.raises(
        errors.TrainingDivergedError,
        match=r"loss became nan in epoch 2.*epoch 1\) is kept.*"
        r"--learning-rate",
    ):
        model.fit(batches.repeat(), epochs=3, steps_per_epoch=2, callbacks=hooks, verbose=0)
    assert checkpoints.read_state(tmp_path / "checkpoints").epoch == 1


def test_best_model_is_saved_without_optimizer_state(tmp_path):
    """best.keras is for inference (a third of the size with Adam); the epoch checkpoint keeps the optimizer."""
    image = keras.Input((8, 8, 3), name="image")
    model = keras.Model(image, keras.layers.Conv2D(1, 3, padding="same", name="logits")(image), name="tiny")
    model.compile("adam", "mse")
    x = np.random.default_rng(0).random((4, 8, 8, 3), np.float32)
    model.fit(x, x[..., :1], epochs=1, verbose=0)
    checkpoints.save_model_atomically(model, tmp_path / "best.keras")
    loaded = keras.models.load_model(tmp_path / "best.keras")
    assert getattr(loaded, "optimizer", None) is None and not loaded.compiled
    as_json = lambda config: json.loads(json.dumps(config))  # tuples and lists alike
    assert loaded.name == "tiny" and as_json(loaded.get_config()) == as_json(model.get_config())
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert not (tmp_path / "best.tmp.keras").exists()

    sequential = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(1, 1)])  # no graph of its own
    assert checkpoints.inference_model(sequential) is sequential


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "--epochs",
        "5",
        "--steps-per-epoch",
        "4",
        "--data-dir",
        synthetic_data_dir,
        "--output-dir",
        str(run_dir),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "kseg.train", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_file = run_dir / "checkpoints" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if state_file.exists() and checkpoints.read_state(state_file.parent).epoch >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoints.read_state(state_file.parent).epoch
    assert 2 <= killed_at < 5

    result = _run_cli(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming {run_dir} after epoch {killed_at} of 5" in result.stdout
    assert [int(r["epoch"]) for r in _history(run_dir)] == [0, 1, 2, 3, 4]
    state = checkpoints.read_state(state_file.parent)
    assert state.epoch == 5
    # The optimizer state came back too: 5 epochs x 4 steps, the schedule's position.
    resolved = config.resolve(overrides={"preset": "synthetic-unet", "image_size": "32"})
    model = setup.build_model(resolved, 1)
    setup.compile_model(model, resolved, 1, 4)
    checkpoints.restore(model, state_file.parent)
    assert int(model.optimizer.iterations) == 20


def test_resume_with_another_config_is_refused(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "state.json").write_text(
        '{"epoch": 1, "best_dice": 0.5, "best_epoch": 0, "weights": null}'
    )
    (run_dir / "config.json").write_text(json.dumps({**config.resolve().to_dict(), "epochs": 3}))
    with pytest.raises(config.ConfigError, match=rf"epochs: 3 -> {config.resolve().epochs}"):
        setup.check_resumable(run_dir, config.resolve())


# ---------------------------------------------------------------------------------------- distribution ---


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    result = _run_cli(
        [
            *TINY,
            "--epochs",
            "2",
            "--steps-per-epoch",
            "3",
            "--strategy",
            "mirrored",
            "--logical-cpus",
            "2",
            "--data-dir",
            synthetic_data_dir,
            "--output-dir",
            str(run_dir),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Number of devices: 2" in result.stderr + result.stdout or (run_dir / "metrics.json").exists()
    history = _history(run_dir)
    assert len(history) == 2 and float(history[1]["loss"]) < float(history[0]["loss"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_workers(args, count=2):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(count)]
    processes = []
    for index in range(count):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "2"}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "kseg.train", *args(index)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


@pytest.mark.slow
def test_multiworker_on_fresh_machines_builds_the_data_after_the_strategy(tmp_path):
    """Each worker with its own empty --data-dir: the dataset is built after the strategy exists (building it
    first started TensorFlow's runtime, and the strategy then failed: 'Collective ops must be configured at
    program startup')."""
    run_dir = tmp_path / "run"
    processes = _start_workers(
        lambda index: [
            *TINY,
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--strategy",
            "multiworker",
            "--data-dir",
            str(tmp_path / f"tfds-{index}"),
            "--output-dir",
            str(run_dir),
        ]
    )
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "Collective ops must be configured" not in out
    assert (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_multiworker_two_processes_train_identical_weights(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    processes = _start_workers(
        lambda index: [
            *TINY,
            "--epochs",
            "3",
            "--steps-per-epoch",
            "4",
            "--strategy",
            "multiworker",
            "--data-dir",
            synthetic_data_dir,
            "--output-dir",
            str(run_dir),
        ]
    )
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    digests = [[line for line in out.splitlines() if "worker weights sha256" in line] for out in outputs]
    assert len(digests[0]) == 1 and digests[0] == digests[1]
    history = _history(run_dir)
    assert len(history) == 3 and float(history[-1]["loss"]) < float(history[0]["loss"])
    assert (run_dir / "metrics.json").exists() and (run_dir / "best.keras").exists()
    assert "kseg.train: tfds_ph2" not in outputs[1] and "done in" not in outputs[1]  # only the chief reports


def test_the_history_row_is_written_before_the_epoch_checkpoint(tmp_path):
    """A process killed between the two must never leave a checkpoint of epoch N without the history row of
    epoch N (the resume keeps rows before the checkpoint's epoch and would lose that one for good)."""
    import types

    import keras

    from kseg import tasks
    from kseg.training import checkpoints as checkpoints_lib
    from kseg.training import fit_loop

    class TaskScore(keras.callbacks.Callback):
        """Stands for a task's validation callback (the instance task's mask AP)."""

    setup = types.SimpleNamespace(
        run_dir=tmp_path,
        state=checkpoints_lib.RunState(),
        config=types.SimpleNamespace(batch_size=8, keep="best", epochs=3),
        task=tasks.get(tasks.INSTANCES),
        validation_callbacks=[TaskScore()],
    )
    hooks = fit_loop.fit_callbacks(setup)
    kinds = [type(hook) for hook in hooks]
    assert kinds.index(keras.callbacks.CSVLogger) < kinds.index(checkpoints_lib.EpochCheckpoint)
    # the task's score is in the logs before the CSV row and the checkpoint that monitors it read them
    assert kinds.index(TaskScore) < kinds.index(keras.callbacks.CSVLogger)
    assert hooks[kinds.index(checkpoints_lib.EpochCheckpoint)].monitor == "val_mask_ap"


def test_the_default_preset_keeps_the_last_epoch_and_the_summary_says_so(tmp_path):
    """Best-of-20-validation-images picked early epochs on PH2 (docs/benchmarks.md), so ph2-unet-lite0 keeps
    the last epoch; the run's summary must not then call the validation epoch the model."""
    from kseg.training import checkpoints as checkpoints_lib
    from kseg.training import finish

    default, _ = train.config_from_args([])
    assert default.keep == "last"
    state = checkpoints_lib.RunState(epoch=80, best_dice=0.9596, best_epoch=31, train_seconds=60.0)
    metrics = {"test": {"dice": 0.95, "iou": 0.9}}
    line = finish.summary_line(default, tmp_path, metrics, state)
    assert "kept the last epoch (80)" in line and "best on validation: epoch 32" in line
    as_best = finish.summary_line(config.resolve(overrides={"keep": "best"}), tmp_path, metrics, state)
    assert "kept" not in as_best and "best epoch 32" in as_best
