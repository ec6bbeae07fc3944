"""bench/loop.py measures what it says: the bare step trains the same weights as the loop epochs it is
compared with, and every preset asked for is measured."""

import pytest

from kseg.training import config as config_lib


@pytest.fixture
def bench_loop(load_bench_script):
    return load_bench_script("loop")


@pytest.mark.parametrize("freeze_epochs, encoder_trains", [(4, False), (0, True), (2, True)])
def test_bare_model_trains_the_encoder_as_the_timed_epochs_do(bench_loop, freeze_epochs, encoder_trains):
    import keras

    from kseg.training import setup

    config = config_lib.resolve(
        overrides={
            "preset": "ph2-unet-lite0",
            "image_size": (64, 64),
            "epochs": 4,
            "freeze_encoder_epochs": freeze_epochs,
            "steps_per_epoch": 2,
        }
    )
    model = bench_loop.bare_model(config, num_classes=1)
    trainable = {id(v) for v in model.trainable_variables}
    encoder_weights = [
        v
        for layer in setup.encoder_layers(model)
        if not isinstance(layer, keras.layers.BatchNormalization)  # frozen in every phase
        for v in layer.weights
    ]
    decoder_kernel = model.get_layer("dec1_conv1").kernel
    assert id(decoder_kernel) in trainable
    assert encoder_weights, "the encoder has weights to train"
    assert all((id(v) in trainable) == encoder_trains for v in encoder_weights)


def test_presets_without_an_encoder_run_once_per_precision_whatever_the_phases(bench_loop):
    runs = bench_loop.planned_runs(["ph2-unet", "ph2-unet-lite0"], ["float32", "bfloat16"], ["frozen", "finetune"])
    assert runs == [
        ("ph2-unet", "float32", "preset"),
        ("ph2-unet", "bfloat16", "preset"),
        ("ph2-unet-lite0", "float32", "frozen"),
        ("ph2-unet-lite0", "float32", "finetune"),
        ("ph2-unet-lite0", "bfloat16", "frozen"),
        ("ph2-unet-lite0", "bfloat16", "finetune"),
    ]


def test_epoch_clock_times_the_epoch_end_callbacks_apart_from_validation(bench_loop, monkeypatch):
    clock = bench_loop.EpochClock()
    ticks = iter([0.0, 1.0, 1.5, 1.9, 10.0, 12.0])  # begin, test begin, test end, epoch end; then a second epoch
    monkeypatch.setattr(bench_loop.time, "perf_counter", lambda: next(ticks))
    hooks = clock.callback
    hooks.on_epoch_begin(0)
    hooks.on_test_begin()
    hooks.on_test_end()
    hooks.on_epoch_end(0)
    hooks.on_epoch_begin(1)  # an epoch without validation: no epoch-end time to tell apart
    hooks.on_epoch_end(1)
    assert clock.train_seconds == pytest.approx([1.4, 2.0])
    assert clock.epoch_end_seconds[0] == pytest.approx(0.4)
    assert clock.epoch_end_seconds[1] is None
    assert bench_loop.median_seconds(clock.epoch_end_seconds) == "0.40"
    assert bench_loop.median_seconds([None]) == "-"
