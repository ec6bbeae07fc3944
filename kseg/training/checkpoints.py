"""Crash-safe run state: the last epoch's weights and optimizer, and the best model so far.

A run killed at any moment (SIGKILL included) and started again with the same command resumes from the
last finished epoch with the same optimizer state and learning-rate schedule position. Files are written
under temporary names and renamed into place, and ``state.json`` (the single source of truth) is replaced
last, so a kill mid-write leaves the previous state intact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

import keras

from kseg.core import files
from kseg.core.errors import UsageError

STATE_FILE = "state.json"


@dataclasses.dataclass
class RunState:
    epoch: int = 0  # epochs finished
    best_dice: float = -math.inf
    best_epoch: int = -1
    weights: str | None = None  # file name in the checkpoint folder
    train_seconds: float = 0.0  # in training batches, all sessions of the run together
    images_trained: int = 0

    @property
    def images_per_second(self) -> float | None:
        return self.images_trained / self.train_seconds if self.train_seconds else None


def read_state(folder) -> RunState:
    path = pathlib.Path(folder) / STATE_FILE
    if not path.exists():
        return RunState()
    try:
        values = json.loads(path.read_text())
        if values.get("best_dice") is None:
            values["best_dice"] = -math.inf
        return RunState(**values)
    except (ValueError, TypeError) as e:
        raise UsageError(
            f"{path}: not a kseg run state ({e}); choose a new --output-dir or remove "
            f"{path.parent} to start the run again"
        ) from None


def restore(model: keras.Model, folder) -> RunState:
    """Load the last saved epoch into ``model`` (and its optimizer); a fresh state when there is none."""
    state = read_state(folder)
    if state.weights:
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(pathlib.Path(folder) / state.weights))
    return state


def inference_model(model: keras.Model) -> keras.Model:
    """The same layers and weights in a model without optimizer or compile settings, so that the best model
    is what evaluation, prediction and export load (``compile=False``), a third of the size of the compiled
    model with Adam's two moments and as much quicker to write each time validation improves; the state to
    resume from is the epoch checkpoint. A model that is not a plain functional one is saved as it is."""
    try:
        plain = keras.Model(model.input, model.output, name=model.name)
    except (AttributeError, ValueError):  # a subclassed model has no graph to rewire
        return model
    return plain if type(plain) is type(model) else model


def save_model_atomically(model: keras.Model, path) -> None:
    path = pathlib.Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    inference_model(model).save(tmp)
    os.replace(tmp, path)


class EpochCheckpoint(keras.callbacks.Callback):
    """At each epoch end: the best model (on ``monitor``) to ``best_path`` and the full state to ``folder``.

    Without a validation split there is no ``monitor`` to choose by, so ``best_path`` is the last epoch's
    model (and ``best_epoch`` the last epoch), not a stale first one.
    """

    def __init__(self, folder, best_path, state: RunState, monitor: str = "val_dice", write: bool = True):
        super().__init__()
        self.folder = pathlib.Path(folder)
        self.best_path = pathlib.Path(best_path)
        self.state = state
        self.monitor = monitor
        self.write = write  # False on non-chief workers: they take part in training but write nothing

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:  # no validation split: the newest epoch stands for the run
            improved = True
            self.state.best_epoch = epoch
        else:
            value = float(logs[self.monitor])
            improved = math.isfinite(value) and value > self.state.best_dice
            if improved:
                self.state.best_dice, self.state.best_epoch = value, epoch
        if not self.write:
            self.state.epoch = epoch + 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if improved or not self.best_path.exists():
            save_model_atomically(self.model, self.best_path)
        weights = f"epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(str(self.folder / weights))
        previous = self.state.weights
        self.state.epoch, self.state.weights = epoch + 1, weights
        state = dataclasses.asdict(self.state)
        state["best_dice"] = None if not math.isfinite(self.state.best_dice) else self.state.best_dice
        files.atomic_write_text(self.folder / STATE_FILE, json.dumps(state, indent=2), sync=True)
        if previous and previous != weights and (self.folder / previous).exists():
            (self.folder / previous).unlink()
