"""The ``model.fit`` driver: every strategy but multi-worker (default, one device, mirrored, TPU)."""

from __future__ import annotations

import sys

import keras
import tensorflow as tf

from kseg.training import callbacks, history
from kseg.training.checkpoints import EpochCheckpoint
from kseg.training.setup import TrainingSetup, compile_model, encoder_phases, set_encoder_trainable


def _verbosity(verbose):
    if verbose != "auto":
        return verbose
    return 1 if sys.stdout.isatty() else 2


def fit_callbacks(setup: TrainingSetup) -> list[keras.callbacks.Callback]:
    """NaN stop, timer (before the checkpoint, which saves its figures), CSV history, checkpoints and
    TensorBoard logs. The epoch's history row is written before its checkpoint, as the multi-worker loop
    does: a process killed between the two then leaves a row that the resume drops (``truncate_history``),
    never a checkpoint whose row is missing."""
    run_dir, state = setup.run_dir, setup.state
    history.truncate_history(run_dir / history.FILE_NAME, state.epoch)
    return [
        callbacks.StopOnNaN(run_dir, state),
        callbacks.TrainTimer(state, setup.config.batch_size),
        *setup.validation_callbacks,  # the task's validation scores, into the logs the next ones read
        keras.callbacks.CSVLogger(str(run_dir / history.FILE_NAME), append=True),
        EpochCheckpoint(
            run_dir / "checkpoints",
            run_dir / "best.keras",
            state,
            monitor=setup.task.monitor,
            keep=setup.config.keep,
            epochs=setup.config.epochs,
        ),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), write_graph=False, profile_batch=0),
    ]


def train(setup: TrainingSetup, *, verbose="auto", extra_callbacks=()) -> None:
    """Run the remaining epochs with ``model.fit``, one call per encoder phase (frozen, then fine-tuned)."""
    config, model = setup.config, setup.model
    if setup.state.epoch >= config.epochs:
        return
    is_tpu = isinstance(setup.strategy, tf.distribute.TPUStrategy)
    steps = setup.steps_per_epoch if (config.steps_per_epoch or is_tpu) else None
    hooks = [*fit_callbacks(setup), *extra_callbacks]
    encoder_trainable = True  # as prepare() compiled the model
    for end_epoch, trainable in encoder_phases(config, setup.state.epoch):
        if trainable != encoder_trainable:
            set_encoder_trainable(model, trainable)
            with setup.strategy.scope():  # a change of trainable weights takes a new compile
                compile_model(model, config, setup.num_classes, setup.steps_per_epoch, optimizer=model.optimizer)
            encoder_trainable = trainable
        model.fit(
            setup.train_data,
            validation_data=setup.validation_data,
            epochs=end_epoch,
            initial_epoch=setup.state.epoch,
            steps_per_epoch=steps,
            callbacks=hooks,
            verbose=_verbosity(verbose),
            shuffle=False,
        )
