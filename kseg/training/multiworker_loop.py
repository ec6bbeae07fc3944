"""Multi-worker training with ``MultiWorkerMirroredStrategy`` and a custom loop.

Keras 3's ``model.fit`` fails with two or more workers (keras-team/keras#20585), so this path runs the
training step with ``strategy.run`` and averages per-image losses over the global batch. Everything around
it is shared with the ``fit`` path: the same data pipeline, model, optimizer and schedule, checkpoint format
(``checkpoints/`` with ``state.json``), ``history.csv`` and final report. Only the chief writes; every
worker restores from the chief's checkpoint, so the run directory must be on storage all workers can read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from kseg import checkpoints, data, distribute
from kseg.losses import get_loss
from kseg.metrics import default_metrics


def weights_digest(model) -> str:
    """SHA-256 of all weights, to check that workers ended with identical models."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight.numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _distributed_step(strategy, model, optimizer, loss_fn, global_batch_size, scale_loss):
    def replica_step(images, masks):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_image = loss_fn(masks, logits)
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
            scaled = optimizer.scale_loss(loss) if scale_loss else loss
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def step(iterator):
        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def _validate(model, dataset, metrics) -> dict:
    for metric in metrics:
        metric.reset_state()
    for images, masks in dataset:
        logits = model(images, training=False)
        for metric in metrics:
            metric.update_state(masks, logits)
    return {f"val_{m.name}": float(m.result()) for m in metrics}


def train_multiworker(config, spec, verbose="auto") -> dict:
    from kseg.train import (TrainingDivergedError, build_model, check_output_dir, check_resumable,
                            finish_run, make_optimizer)

    strategy = distribute.make_strategy("multiworker")
    chief = distribute.is_chief(strategy)
    run_dir = pathlib.Path(config.output_dir)
    num_classes = spec.num_classes
    if chief:
        check_resumable(run_dir, config)
    keras.utils.set_random_seed(config.seed)
    policy = distribute.precision_policy(config.mixed_precision)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        steps_per_epoch = config.steps_per_epoch or max(spec.split_sizes["train"] // config.batch_size, 1)
        train_data = data.load(config.dataset, "train", image_size=config.image_size,
                               batch_size=config.batch_size, augmentation=config.augmentation, shuffle=True,
                               repeat=True, seed=config.seed, drop_remainder=True, data_dir=config.data_dir,
                               manual_dir=config.manual_dir, num_classes=config.num_classes)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        iterator = iter(strategy.experimental_distribute_dataset(train_data.with_options(options)))
        validation_data = None
        if spec.split_sizes.get("validation"):
            validation_data = data.load(config.dataset, "validation", image_size=config.image_size,
                                        batch_size=config.batch_size, data_dir=config.data_dir,
                                        manual_dir=config.manual_dir, num_classes=config.num_classes)
        with strategy.scope():
            model = build_model(config, num_classes, strategy.num_replicas_in_sync)
            optimizer = make_optimizer(config, steps_per_epoch)
            if policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer)  # attaches the optimizer for checkpoints; the loop trains
            optimizer.build(model.trainable_variables)
        loss_fn = get_loss(config.loss, num_classes=num_classes, reduction=None)
        metrics = default_metrics(num_classes=num_classes, threshold=config.threshold)
        if chief:
            check_output_dir(run_dir, needed_bytes=model.count_params() * 4 * 6 + 64 * 2**20)
            (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        state = checkpoints.restore(model, run_dir / "checkpoints")
        saver = checkpoints.EpochCheckpoint(run_dir / "checkpoints", run_dir / "best.keras", state, write=chief)
        saver.set_model(model)
        step = _distributed_step(strategy, model, optimizer, loss_fn, config.batch_size,
                                 scale_loss=policy == "mixed_float16")
        history_path = run_dir / "history.csv"
        if chief and state.epoch:
            print(f"kseg.train: resuming {run_dir} after epoch {state.epoch} of {config.epochs}", flush=True)
        train_seconds, images = 0.0, 0
        for epoch in range(state.epoch, config.epochs):
            progress = keras.utils.Progbar(steps_per_epoch, verbose=1 if chief else 0,
                                           stateful_metrics=["loss"])
            if chief:
                print(f"Epoch {epoch + 1}/{config.epochs}", flush=True)
            started, losses = time.perf_counter(), []
            for batch in range(steps_per_epoch):
                loss = float(step(iterator))
                if not math.isfinite(loss):
                    raise TrainingDivergedError(
                        f"loss became {loss} in epoch {epoch + 1}, batch {batch + 1}; stopped. The last good "
                        f"checkpoint (epoch {state.epoch}) is kept in {run_dir / 'checkpoints'}.")
                losses.append(loss)
                progress.update(batch + 1, [("loss", float(np.mean(losses)))])
            train_seconds += time.perf_counter() - started
            images += steps_per_epoch * config.batch_size
            logs = {"loss": float(np.mean(losses))}
            if validation_data is not None:
                logs.update(_validate(model, validation_data, metrics))
            if chief:
                print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
                _append_history(history_path, epoch, logs)
            saver.on_epoch_end(epoch, logs)
        print(f"kseg.train: worker weights sha256 {weights_digest(model)}", flush=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if not chief:
        return {}
    return finish_run(config, spec, run_dir, train_seconds, images / train_seconds if train_seconds else None,
                      state)


def _append_history(path: pathlib.Path, epoch: int, logs: dict) -> None:
    from kseg.train import _truncate_history

    _truncate_history(path, epoch)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["epoch", *logs])
        writer.writerow([epoch, *(f"{v:.6f}" for v in logs.values())])
