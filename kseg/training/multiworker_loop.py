"""The multi-worker driver: ``MultiWorkerMirroredStrategy`` with a custom loop.

Keras 3's ``model.fit`` fails with two or more workers (keras-team/keras#20585), so this loop runs the step
with ``strategy.run`` and averages per-image losses over the global batch. Set-up, callbacks (NaN stop,
timer, checkpoints), ``history.csv`` and the final report are the same as the ``fit`` loop's. Only the chief
writes; every worker restores from the chief's checkpoint, so the run directory must be on storage all
workers can read.
"""

from __future__ import annotations

import hashlib
import logging

import keras
import numpy as np
import tensorflow as tf

from kseg.tasks.losses import get_loss
from kseg.tasks.metrics import default_metrics
from kseg.training import callbacks, history
from kseg.training.checkpoints import EpochCheckpoint
from kseg.training.setup import TrainingSetup, encoder_phases, set_encoder_trainable

log = logging.getLogger(__name__)


def weights_digest(model) -> str:
    """SHA-256 of all weights, to check that workers ended with identical models."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight.numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _distributed_step(strategy, model, loss_fn, global_batch_size):
    optimizer = model.optimizer  # a LossScaleOptimizer under mixed_float16 (compile wraps it)

    def replica_step(images, masks):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(masks, logits), global_batch_size=global_batch_size)
            scaled = optimizer.scale_loss(loss)
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
    return {f"val_{metric.name}": float(metric.result()) for metric in metrics}


def train(setup: TrainingSetup, *, verbose="auto") -> None:
    """Run the remaining epochs; every worker calls this with the same config."""
    config, strategy, model, state = setup.config, setup.strategy, setup.model, setup.state
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(setup.train_data.with_options(options)))
    loss_fn = get_loss(config.loss, num_classes=setup.num_classes, reduction=None)
    metrics = default_metrics(num_classes=setup.num_classes, threshold=config.threshold)
    history_path = setup.run_dir / history.FILE_NAME
    if setup.chief:
        history.truncate_history(history_path, state.epoch)
    hooks = keras.callbacks.CallbackList(
        [
            callbacks.StopOnNaN(setup.run_dir, state),
            callbacks.TrainTimer(state, config.batch_size),
            EpochCheckpoint(
                setup.run_dir / "checkpoints",
                setup.run_dir / "best.keras",
                state,
                write=setup.chief,
                keep=setup.config.keep,
                epochs=setup.config.epochs,
            ),
        ],
        model=model,
    )
    encoder_trainable, start = {}, state.epoch
    for end_epoch, trainable in encoder_phases(config, state.epoch):
        encoder_trainable.update(dict.fromkeys(range(start, end_epoch), trainable))
        start = end_epoch
    step, step_trainable = None, None
    for epoch in range(state.epoch, config.epochs):
        if encoder_trainable[epoch] != step_trainable:  # a step is traced for one set of trainable weights
            step_trainable = encoder_trainable[epoch]
            set_encoder_trainable(model, step_trainable)
            step = _distributed_step(strategy, model, loss_fn, config.batch_size)
        progress = keras.utils.Progbar(
            setup.steps_per_epoch, verbose=1 if setup.chief and verbose else 0, stateful_metrics=["loss"]
        )
        if setup.chief and verbose:
            print(f"Epoch {epoch + 1}/{config.epochs}", flush=True)
        hooks.on_epoch_begin(epoch)
        losses = []
        for batch in range(setup.steps_per_epoch):
            losses.append(float(step(iterator)))
            hooks.on_train_batch_end(batch, {"loss": losses[-1]})
            progress.update(batch + 1, [("loss", float(np.mean(losses)))])
        logs = {"loss": float(np.mean(losses))}
        if setup.validation_data is not None:
            hooks.on_test_begin()
            logs.update(_validate(model, setup.validation_data, metrics))
        if setup.chief:
            if verbose:
                print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
            history.append_epoch(history_path, epoch, logs)
        hooks.on_epoch_end(epoch, logs)
    log.info(f"worker weights sha256 {weights_digest(model)}")
