"""``python -m kseg.train``: train a segmentation model and leave a complete run directory.

The run directory holds ``config.json`` (the resolved config), ``best.keras`` (best validation Dice),
``checkpoints/`` (last epoch: weights, optimizer, epoch), ``history.csv``, ``logs/`` (TensorBoard),
``curves.png``, ``predictions.png`` and ``metrics.json`` (validation and test scores at each image's
original resolution, means over images). Rerunning the same command after a crash resumes the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import shutil
import sys
import time

from kseg import config as config_lib

RESUME_IGNORES = {"strategy", "data_dir", "manual_dir", "output_dir", "jit_compile", "preset"}


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutputDirError(OSError):
    """The output directory cannot be written (or has too little space); found before training starts."""


# ------------------------------------------------------------------------------------------- flags ---

def build_parser() -> argparse.ArgumentParser:
    presets = ", ".join(config_lib.TRAINING_PRESETS)
    parser = argparse.ArgumentParser(
        prog="python -m kseg.train",
        description="Train a U-Net or SegNet. A preset sets good defaults; a --config file and then flags "
                    f"override them. Presets: {presets} (default {config_lib.DEFAULT_PRESET}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=None,
    )
    add = parser.add_argument
    add("--preset", help=f"named starting point: {presets}")
    add("--config", help="JSON or YAML file of config fields (same names as the flags, with underscores)")
    add("--dataset", help="tfds_ph2/ph2, tfds_ph2/mads, tfds_ph2/synthetic, any TFDS name, or folder:PATH "
                          "(PATH/images + PATH/masks, optionally inside train/ validation/ test/)")
    add("--model", help="model and size: " + ", ".join(config_lib.MODEL_PRESETS))
    add("--image-size", help="model input size, 256 or HxW like 256x320 (divisible by 2**depth)")
    add("--batch-size", type=int, help="global batch size (split across replicas)")
    add("--epochs", type=int, help="number of epochs")
    add("--learning-rate", type=float, help="peak learning rate (after warm-up)")
    add("--loss", help="bce, dice, bce_dice, focal or tversky (categorical versions for multi-class)")
    add("--seed", type=int, help="seed for weights, shuffling and augmentation")
    add("--output-dir", help="run directory (rerunning with the same one resumes)")
    add("--manual-dir", help="manual download folder: builds the TFDS config on first use")
    add("--data-dir", help="TFDS data dir (default ~/tensorflow_datasets)")
    add("--strategy", help="auto, default, one_device, mirrored, multiworker (TF_CONFIG) or tpu")
    add("--mixed-precision", action=argparse.BooleanOptionalAction,
        help="bfloat16 on CPU/TPU, float16 on GPU; outputs stay float32")
    add("--jit-compile", action=argparse.BooleanOptionalAction, help="compile the train step with XLA")
    add("--optimizer", help="adamw, adam or sgd (momentum 0.9, Nesterov)")
    add("--weight-decay", type=float, help="decoupled weight decay")
    add("--schedule", help="cosine (with linear warm-up) or constant")
    add("--warmup-epochs", type=int, help="epochs of linear warm-up (default: a tenth of the epochs, at most 3)")
    add("--augmentation", help="none, flips, light, medium or strong")
    add("--dropout", type=float, help="dropout at the bottleneck")
    add("--steps-per-epoch", type=int, help="batches per epoch (default: one pass over the training split)")
    add("--num-classes", type=int, help="folder datasets with multi-class masks: number of classes")
    add("--threshold", type=float, help="foreground probability threshold for metrics and reports")
    add("--tpu", help="TPU name or grpc:// address for --strategy tpu")
    add("--logical-cpus", type=int, default=1,
        help="split the CPU into N logical devices (mirrored training without GPUs)")
    return parser


def config_from_args(argv=None) -> tuple[config_lib.TrainConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    file_values = config_lib.read_config_file(args.config) if args.config else {}
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "logical_cpus")}
    return config_lib.resolve(file_values=file_values, overrides=overrides), args


# ------------------------------------------------------------------------------------------ checks ---

def check_output_dir(path: pathlib.Path, needed_bytes: int) -> None:
    """Fail before training, not after an hour, when results could not be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as e:
        raise OutputDirError(f"output dir {path} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OutputDirError(f"output dir {path} has {free / 2**20:.0f} MiB free; this run needs about "
                             f"{needed_bytes / 2**20:.0f} MiB (checkpoints, best model, logs)")


def check_resumable(run_dir: pathlib.Path, config: config_lib.TrainConfig) -> None:
    """Resuming with another config would silently mix two runs: refuse, naming the fields that differ."""
    saved_path = run_dir / "config.json"
    if not (run_dir / "checkpoints" / "state.json").exists() or not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUME_IGNORES and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise config_lib.ConfigError(
            f"{run_dir} holds a run with another config ({details}); resume it with the same settings or "
            f"choose a new --output-dir")


# ------------------------------------------------------------------------------------------ pieces ---

def make_optimizer(config: config_lib.TrainConfig, steps_per_epoch: int):
    import keras

    total = config.epochs * steps_per_epoch
    warmup = config.resolved_warmup_epochs * steps_per_epoch
    if config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * 0.01 if warmup else config.learning_rate,
            decay_steps=max(total - warmup, 1), alpha=0.01,
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
        )
    else:
        learning_rate = config.learning_rate
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=config.weight_decay or None)
    return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None)


def build_model(config: config_lib.TrainConfig, num_classes: int, replicas: int = 1):
    """The configured model; with several replicas BN uses global-batch statistics, so every replica and
    worker keeps the same moving averages and the model matches single-device training."""
    from kseg.models import build_preset

    overrides = {"dropout": config.dropout} if config.dropout else {}
    if replicas > 1:
        overrides["batch_norm"] = "sync"
    return build_preset(config.model, image_size=config.image_size, num_classes=num_classes, **overrides)


def compile_model(model, config, num_classes, steps_per_epoch):
    from kseg.losses import get_loss
    from kseg.metrics import default_metrics

    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=get_loss(config.loss, num_classes=num_classes),
        metrics=default_metrics(num_classes=num_classes, threshold=config.threshold),
        jit_compile=config.jit_compile,
    )


def _callbacks(run_dir, state, initial_epoch, write=True):
    import keras

    from kseg.checkpoints import EpochCheckpoint

    class StopOnNaN(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.model.stop_training = True
                raise TrainingDivergedError(
                    f"loss became {float(loss)} in epoch {self.epoch + 1}, batch {batch + 1}; stopped. The last "
                    f"good checkpoint (epoch {state.epoch}) is kept in {run_dir / 'checkpoints'}. Try a lower "
                    f"--learning-rate, or --no-mixed-precision.")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    class TrainTimer(keras.callbacks.Callback):
        """Seconds spent in training batches only (not validation), for images per second."""

        def __init__(self):
            super().__init__()
            self.seconds, self.batches = 0.0, 0

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.seconds += time.perf_counter() - self.start

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

    timer = TrainTimer()
    callbacks = [StopOnNaN(), timer,
                 EpochCheckpoint(run_dir / "checkpoints", run_dir / "best.keras", state, write=write)]
    if write:
        _truncate_history(run_dir / "history.csv", initial_epoch)
        callbacks += [
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False, profile_batch=0),
        ]
    return callbacks, timer


def _truncate_history(path: pathlib.Path, epochs_done: int) -> None:
    """Drop rows of epochs that ran after the last checkpoint (they are about to run again)."""
    if not path.exists():
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs_done]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


# --------------------------------------------------------------------------------------------- run ---

def run(config: config_lib.TrainConfig, *, verbose: int | str = "auto") -> dict:
    """Train as ``config`` says and write the run directory; returns the contents of ``metrics.json``."""
    import keras
    import tensorflow as tf

    from kseg import checkpoints, data, distribute, report

    run_dir = pathlib.Path(config.output_dir)
    spec = data.dataset_spec(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                             num_classes=config.num_classes)
    num_classes = spec.num_classes
    if config.strategy == "multiworker":
        from kseg.custom_loop import train_multiworker

        return train_multiworker(config, spec, verbose=verbose)

    strategy = distribute.make_strategy(config.strategy, config.tpu)
    check_resumable(run_dir, config)
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.mixed_precision))
    try:
        is_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
        train_size = spec.split_sizes.get("train", 0)
        if train_size == 0:
            raise ValueError(f"{config.dataset} has no training examples")
        steps_per_epoch = config.steps_per_epoch or (
            train_size // config.batch_size if is_tpu else math.ceil(train_size / config.batch_size))
        load = lambda split, **kw: data.load(
            config.dataset, split, image_size=config.image_size, batch_size=config.batch_size, seed=config.seed,
            data_dir=config.data_dir, manual_dir=config.manual_dir, num_classes=config.num_classes,
            drop_remainder=is_tpu, **kw)
        train_data = load("train", augmentation=config.augmentation, shuffle=True,
                          repeat=config.steps_per_epoch is not None)
        validation_data = load("validation") if spec.split_sizes.get("validation") else None

        with strategy.scope():
            model = build_model(config, num_classes, strategy.num_replicas_in_sync)
            compile_model(model, config, num_classes, steps_per_epoch)
        check_output_dir(run_dir, needed_bytes=model.count_params() * 4 * 6 + 64 * 2**20)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        state = checkpoints.restore(model, run_dir / "checkpoints")
        if state.epoch:
            print(f"kseg.train: resuming {run_dir} after epoch {state.epoch} of {config.epochs}", flush=True)
        callbacks, timer = _callbacks(run_dir, state, state.epoch)
        started = time.perf_counter()
        if state.epoch < config.epochs:
            model.fit(train_data, validation_data=validation_data, epochs=config.epochs,
                      initial_epoch=state.epoch, steps_per_epoch=steps_per_epoch if config.steps_per_epoch else None,
                      callbacks=callbacks, verbose=_verbosity(verbose), shuffle=False)
        train_seconds = time.perf_counter() - started
        images_per_second = timer.batches * config.batch_size / timer.seconds if timer.seconds else None
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return finish_run(config, spec, run_dir, train_seconds, images_per_second, state)


def _verbosity(verbose):
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else 2


def finish_run(config, spec, run_dir: pathlib.Path, train_seconds, images_per_second, state) -> dict:
    """Score the best model on validation and test at original resolution; write metrics, figures, summary."""
    import keras

    from kseg import report

    best = keras.models.load_model(run_dir / "best.keras")
    metrics: dict = {}
    for split in ("validation", "test"):
        if not spec.split_sizes.get(split):
            continue
        cases, kept = report.score_split(best, config.dataset, split, threshold=config.threshold,
                                         num_classes=spec.num_classes, data_dir=config.data_dir,
                                         manual_dir=config.manual_dir, keep=8 if split == "validation" else 0)
        metrics[split] = report.mean_scores(cases)
        if split == "validation" and spec.num_classes == 1:
            report.plot_predictions(kept, run_dir / "predictions.png",
                                    f"{config.dataset} validation: truth (green) vs prediction (red)")
    metrics.update({
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(images_per_second, 2) if images_per_second else None,
        "best_epoch": state.best_epoch + 1,
        "epochs": config.epochs,
        "scored_at": "original resolution, mean over images",
    })
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if (run_dir / "history.csv").exists():
        report.plot_curves(run_dir / "history.csv", run_dir / "curves.png")
    parts = [f"kseg.train: {config.preset or config.model} on {config.dataset} done in {train_seconds / 60:.1f} min"]
    if state.best_epoch >= 0:
        parts.append(f"best epoch {state.best_epoch + 1} (val Dice {state.best_dice:.4f} at model size)")
    for split in ("validation", "test"):
        if split in metrics:
            parts.append(f"{split} Dice {metrics[split]['dice']:.4f} IoU {metrics[split]['iou']:.4f}")
    if images_per_second:
        parts.append(f"{images_per_second:.1f} img/s")
    parts.append(f"run dir {run_dir}")
    print(" | ".join(parts), flush=True)
    return metrics


def main(argv=None) -> int:
    from kseg.data import DatasetNotReadyError

    try:
        config, args = config_from_args(argv)
        if args.logical_cpus > 1:
            from kseg.distribute import split_cpu

            split_cpu(args.logical_cpus)
        run(config)
    except (config_lib.ConfigError, DatasetNotReadyError, OutputDirError, TrainingDivergedError) as e:
        print(f"kseg.train: error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, TrainingDivergedError) else 3
    except (ValueError, FileNotFoundError) as e:
        print(f"kseg.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
