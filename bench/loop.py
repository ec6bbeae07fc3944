"""What the whole ``kseg.train`` loop costs over the bare training step, per training preset.

For each preset (its model, batch, precision, optimizer, loss, metrics and augmentation, at the image size
given, 256x256 by default) it measures:

- **loop**: ``kseg.training``'s set-up and ``fit`` loop (the code behind ``python -m kseg.train``) on the preset's real
  dataset: the ``tf.data`` pipeline with augmentation, ``model.fit`` with kseg's callbacks (NaN stop,
  epoch checkpoint and best model, CSV log, TensorBoard). Each epoch is timed from its start to its end,
  callbacks and checkpoint writes included, with the validation pass taken out (validation is not training).
  The first epoch (tracing) is dropped; the figure is the median of the others.
- **bare step**: the same compiled model's ``train_on_batch`` on one batch of real images already in memory,
  timed in blocks of one epoch's steps before and after the loop (median).

``overhead = 1 - loop images/s / bare images/s``: the share of training throughput the loop costs. Epochs
are whole passes over the training split in full batches (``--steps-per-epoch``), so both sides run the same
batch shape. The JSON also holds, per epoch, the seconds spent in kseg's epoch-end callbacks (checkpoint,
best model, logs): the part of the overhead that is writing files.

    .venv/bin/python bench/loop.py                          # every training preset, 256x256
    .venv/bin/python bench/loop.py --presets ph2-unet --image-size 192x256
    .venv/bin/python bench/loop.py --presets ph2-unet-lite0 --precisions float32 bfloat16 --phases frozen finetune

``--precisions`` measures each preset in the precisions named (``bfloat16`` forces it on CPUs where
``kseg.core.distribute``'s policy would not choose it, so that the JSON shows what it would cost); ``--phases``
trains a pretrained encoder frozen for every epoch or fine-tuned from the first.

Prints a table and writes JSON (machine, versions, command, one row per preset). Needs the presets' datasets
built or their files under ``../shared/data`` (``KSEG_DATA_DIR``). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import kseg  # noqa: E402,F401  (sets KERAS_BACKEND before keras is imported)

# Manual download folders under the real-data dir, as bench/train.py passes them.
MANUAL_DIRS = {"tfds_ph2/ph2": ".", "tfds_ph2/mads": "bodies"}


def parse_args(argv=None):
    from kseg.training import config as config_lib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(config_lib.TRAINING_PRESETS),
        choices=list(config_lib.TRAINING_PRESETS),
        metavar="PRESET",
        help="training presets (default: all)",
    )
    parser.add_argument("--image-size", default="256", help="HxW or one number (default: 256)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per loop run; the first is dropped (default: 5)")
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="full batches per epoch (default: one pass over the preset's training split)",
    )
    parser.add_argument(
        "--bare-epochs",
        type=int,
        default=2,
        help="bare blocks of one epoch's steps, timed before and after the loop (default: 2)",
    )
    parser.add_argument(
        "--augmentation",
        default=None,
        help="override every preset's augmentation, e.g. none to see what augmentation costs",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["preset", "float32", "bfloat16"],
        default=["preset"],
        help="preset: what the preset and this device's policy choose; float32; bfloat16 (forced on CPUs "
        "with KSEG_CPU_BFLOAT16=1, float16 on GPUs) (default: preset)",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=["preset", "frozen", "finetune"],
        default=["preset"],
        help="for presets with a pretrained encoder: the preset's schedule from epoch 0, the encoder frozen "
        "throughout, or fine-tuned throughout (default: preset)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="TFDS data dir (default: TFDS's own)")
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "loop.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is dropped)")
    size = [int(v) for v in args.image_size.lower().split("x")]
    args.image_size = (size[0], size[-1])
    return args


def forced_cpu_bfloat16(force: bool):
    """``KSEG_CPU_BFLOAT16=1`` while ``force``, so that a CPU whose policy is float32 still measures bfloat16."""
    from kseg.core.distribute import CPU_BFLOAT16_ENV

    return mock.patch.dict(os.environ, {CPU_BFLOAT16_ENV: "1"} if force else {})


class EpochClock:
    """Wall time of each epoch, start to end (callbacks included), less its validation pass; and the share of
    it spent in kseg's epoch-end callbacks (checkpoint, best model, logs), which run after validation."""

    def __init__(self):
        import keras

        clock = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.start, clock.validation, clock.test_end = time.perf_counter(), 0.0, None

            def on_test_begin(self, logs=None):
                clock.test_start = time.perf_counter()

            def on_test_end(self, logs=None):
                clock.test_end = time.perf_counter()
                clock.validation += clock.test_end - clock.test_start

            def on_epoch_end(self, epoch, logs=None):
                # Runs last (appended after kseg's callbacks), so checkpoint and log writes are inside.
                now = time.perf_counter()
                clock.train_seconds.append(now - clock.start - clock.validation)
                clock.epoch_end_seconds.append(None if clock.test_end is None else now - clock.test_end)

        self.train_seconds: list[float] = []
        self.epoch_end_seconds: list[float | None] = []
        self.callback = _Callback()


def measure_loop(config) -> tuple[float, EpochClock]:
    """Images/s of kseg.train's loop: its set-up and ``fit`` loop as they are, with one timing callback added
    last (the final scoring at original size is evaluation, not the loop, and is left out); and the clock,
    with every epoch's times."""
    from kseg.core import distribute
    from kseg.training import fit_loop, setup

    clock = EpochClock()
    with setup.precision_scope(config):
        prepared = setup.prepare(config, distribute.make_strategy(config.strategy))
        fit_loop.train(prepared, verbose=0, extra_callbacks=[clock.callback])
    epoch_seconds = statistics.median(clock.train_seconds[1:])
    return config.steps_per_epoch * config.batch_size / epoch_seconds, clock


def bare_model(config, num_classes: int):
    """The model ``kseg.train`` builds and compiles, with the encoder frozen or trainable as in the loop's
    last epoch (the timed epochs), so that both sides train the same weights."""
    from kseg.training import setup

    model = setup.build_model(config, num_classes)
    setup.set_encoder_trainable(model, setup.encoder_phases(config, 0)[-1][1])
    setup.compile_model(model, config, num_classes, config.steps_per_epoch)
    return model


def bare_stepper(config, num_classes: int):
    """A function that times ``steps`` calls of ``train_on_batch`` on one real, augmented batch held in
    memory, with the model, optimizer, loss and metrics that ``kseg.train`` compiles; returns images/s."""
    import keras

    from kseg import data
    from kseg.training import setup

    keras.utils.set_random_seed(config.seed)
    with setup.precision_scope(config):
        images, masks = next(
            iter(
                data.load(
                    config.dataset,
                    "train",
                    image_size=config.image_size,
                    batch_size=config.batch_size,
                    seed=config.seed,
                    data_dir=config.data_dir,
                    manual_dir=config.manual_dir,
                    augmentation=config.augmentation,
                    shuffle=True,
                    repeat=True,
                )
            )
        )
        model = bare_model(config, num_classes)
    for _ in range(3):
        model.train_on_batch(images, masks)

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, masks)
        return steps * config.batch_size / (time.perf_counter() - start)

    return run


def median_seconds(values) -> str:
    """The median of the timed epochs' values as text, or "-" where none was timed."""
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def planned_runs(presets, precisions, phases) -> list[tuple[str, str, str]]:
    """``(preset, precision, phase)`` to measure: a preset without a pretrained encoder has one phase, so it
    runs once per precision whatever ``phases`` names."""
    from kseg.training import config as config_lib

    return [
        (preset, precision, phase)
        for preset, precision in itertools.product(presets, precisions)
        for phase in (phases if config_lib.TRAINING_PRESETS[preset].get("freeze_encoder_epochs") else ["preset"])
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras

    from kseg import data
    from kseg.core import distribute
    from kseg.training import config as config_lib

    rows = []
    for preset, precision, phase in planned_runs(args.presets, args.precisions, args.phases):
        base = config_lib.TRAINING_PRESETS[preset]
        manual = MANUAL_DIRS.get(base["dataset"])
        manual_dir = str((common.real_data_dir() / manual).resolve()) if manual else None
        data_dir = str(args.data_dir) if args.data_dir else None
        spec = data.dataset_spec(base["dataset"], data_dir=data_dir, manual_dir=manual_dir)
        steps = args.steps_per_epoch or max(1, spec.split_sizes["train"] // base["batch_size"])
        overrides = dict(
            preset=preset,
            image_size=args.image_size,
            epochs=args.epochs,
            steps_per_epoch=steps,
            augmentation=args.augmentation,
            manual_dir=manual_dir,
            data_dir=data_dir,
        )
        if precision != "preset":
            overrides["mixed_precision"] = precision == "bfloat16"
        if phase != "preset":
            overrides["freeze_encoder_epochs"] = args.epochs if phase == "frozen" else 0
        with (
            tempfile.TemporaryDirectory(prefix=f"kseg-loop-{preset}-") as run_dir,
            forced_cpu_bfloat16(precision == "bfloat16"),
        ):
            config = config_lib.resolve(overrides=dict(overrides, output_dir=run_dir))
            policy = distribute.precision_policy(config.mixed_precision)
            keras.backend.clear_session()
            # Bare blocks of one epoch's steps before and after the loop, so slow phases of a shared
            # machine hit both sides alike; medians on both sides.
            bare = bare_stepper(config, spec.num_classes)
            bare_rates = [bare(steps) for _ in range(args.bare_epochs)]
            loop_rate, clock = measure_loop(config)
            bare_rates += [bare(steps) for _ in range(args.bare_epochs)]
            bare_rate = statistics.median(bare_rates)
        row = {
            "preset": preset,
            "model": config.model_preset,
            "dataset": config.dataset,
            "image_size": list(config.image_size),
            "batch_size": config.batch_size,
            "mixed_precision": config.mixed_precision,
            "policy": policy,
            "phase": phase if base.get("freeze_encoder_epochs") else "-",
            "freeze_encoder_epochs": config.freeze_encoder_epochs,
            "augmentation": config.augmentation,
            "steps_per_epoch": config.steps_per_epoch,
            "epoch_train_seconds": [round(s, 3) for s in clock.train_seconds],
            # kseg's callbacks after validation: the epoch checkpoint, best.keras when validation improved, logs.
            "epoch_end_callback_seconds": [None if s is None else round(s, 3) for s in clock.epoch_end_seconds],
            "bare_block_images_per_s": [round(r, 3) for r in bare_rates],
            "loop_images_per_s": round(loop_rate, 3),
            "bare_images_per_s": round(bare_rate, 3),
            "overhead": round(1 - loop_rate / bare_rate, 4),
        }
        rows.append(row)
        print(
            f"{preset} {policy} {row['phase']}: loop {loop_rate:.2f} img/s, bare {bare_rate:.2f} img/s, "
            f"overhead {100 * row['overhead']:+.1f}%",
            flush=True,
        )

    table = [
        {
            **r,
            "input": "x".join(map(str, r["image_size"])),
            "precision": r["policy"],
            "overhead_pct": f"{100 * r['overhead']:+.1f}%",
            "epoch_end_s": median_seconds(r["epoch_end_callback_seconds"][1:]),
        }
        for r in rows
    ]
    print()
    common.print_table(
        table,
        [
            "preset",
            "model",
            "input",
            "precision",
            "phase",
            ("loop_images_per_s", "loop img/s"),
            ("bare_images_per_s", "bare step img/s"),
            ("overhead_pct", "loop overhead"),
            ("epoch_end_s", "epoch-end callbacks s"),
        ],
        markdown=True,
    )
    path = common.write_results(
        args.output,
        rows,
        benchmark="loop",
        extra={"note": common.NOISE_NOTE + " Overhead can come out negative within that noise."},
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
