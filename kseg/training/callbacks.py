"""Callbacks both training loops use: ``model.fit`` gets them as callbacks, the multi-worker loop calls the
same hooks through a ``keras.callbacks.CallbackList``, so a run stops, times and saves itself the same way."""

from __future__ import annotations

import math
import pathlib
import time

import keras

from kseg.core.errors import TrainingDivergedError
from kseg.training.checkpoints import RunState


def diverged_error(
    loss: float, epoch: int, batch: int, run_dir: pathlib.Path, state: RunState
) -> TrainingDivergedError:
    if state.epoch:
        kept = f"The last good checkpoint (epoch {state.epoch}) is kept in {run_dir / 'checkpoints'}."
    else:
        kept = "No epoch had finished, so nothing was saved."
    return TrainingDivergedError(
        f"loss became {loss} in epoch {epoch + 1}, batch {batch + 1}; stopped. {kept} "
        f"Try a lower --learning-rate, or --no-mixed-precision."
    )


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite loss, before a NaN reaches a checkpoint."""

    def __init__(self, run_dir, state: RunState):
        super().__init__()
        self.run_dir, self.state, self.epoch = pathlib.Path(run_dir), state, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            if self.model is not None:
                self.model.stop_training = True
            raise diverged_error(float(loss), self.epoch, batch, self.run_dir, self.state)


class TrainTimer(keras.callbacks.Callback):
    """Seconds in training batches only (validation and checkpoints excluded), added to the run state
    at each epoch end, so images per second cover every session of a resumed run."""

    def __init__(self, state: RunState, batch_size: int):
        super().__init__()
        self.state, self.batch_size = state, batch_size
        self.start, self.elapsed, self.batches = None, None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.elapsed, self.batches = time.perf_counter(), None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_test_begin(self, logs=None):
        if self.start is not None and self.elapsed is None:
            self.elapsed = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()
        self.state.train_seconds += self.elapsed
        self.state.images_trained += self.batches * self.batch_size
