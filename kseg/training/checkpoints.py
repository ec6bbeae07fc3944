"""Crash-safe run state: the last epoch's weights and optimizer, and the best model so far.

A run killed at any moment (SIGKILL included) and started again with the same command resumes from the
last finished epoch with the same optimizer state and learning-rate schedule position. Files are written
under temporary names and renamed into place, and ``state.json`` (the single source of truth) is replaced
last, so a kill mid-write leaves the previous state intact.

Besides the weights of the last epoch, the state keeps an exponential moving average of the weights, updated
at each epoch end (``AVERAGE_MOMENTUM``). At the last epoch the run writes ``last.keras`` and
``average.keras`` next to ``best.keras``; ``TrainConfig.keep`` says which of the three is the run's model
(``best.keras``). Keras optimizers' own ``use_ema`` is not used: ``model.fit`` overwrites the model with
the average at the end of every ``fit`` call (one per encoder phase here, so the fine-tuning phase would
start from the average of the frozen one), and it pairs averages with ``model.trainable_weights`` by
position, which no longer match the optimizer's variables while the encoder is frozen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil

import keras
import numpy as np

from kseg.core import files
from kseg.core.errors import UsageError

STATE_FILE = "state.json"
#: Weight of the running average at each epoch end: the average leans on the last ~5 epochs (1 / (1 - 0.8)),
#: about 100 steps of PH2's 20 a epoch, as Keras' default ``ema_momentum`` of 0.99 a step would.
AVERAGE_MOMENTUM = 0.8
#: The models a run writes at its last epoch, next to best.keras (TrainConfig.keep chooses among them).
LAST_FILE, AVERAGE_FILE = "last.keras", "average.keras"


@dataclasses.dataclass
class RunState:
    epoch: int = 0  # epochs finished
    best_dice: float = -math.inf
    best_epoch: int = -1
    weights: str | None = None  # file name in the checkpoint folder
    train_seconds: float = 0.0  # in training batches, all sessions of the run together
    images_trained: int = 0
    average: str | None = None  # file name in the checkpoint folder: the moving average of the weights

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


def read_average(folder, state: RunState) -> list | None:
    """The moving average of the weights kept with ``state`` (None before the first epoch)."""
    if not state.average:
        return None
    with np.load(pathlib.Path(folder) / state.average) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _save_average(path: pathlib.Path, average: list) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, *average)
    os.replace(tmp, path)


def _copy_atomically(source: pathlib.Path, target: pathlib.Path) -> None:
    tmp = target.with_name(target.stem + ".tmp" + target.suffix)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class EpochCheckpoint(keras.callbacks.Callback):
    """At each epoch end: the best model (on ``monitor``) to ``best_path``, the moving average of the weights,
    and the full state to ``folder``; at the last epoch (``epochs``) also ``last.keras`` and
    ``average.keras``, and with ``keep`` ``"last"`` or ``"average"`` that one becomes ``best_path``.

    Without a validation split there is no ``monitor`` to choose by, so ``best_path`` is the last epoch's
    model (and ``best_epoch`` the last epoch), not a stale first one.
    """

    def __init__(
        self,
        folder,
        best_path,
        state: RunState,
        monitor: str = "val_dice",
        write: bool = True,
        keep: str = "best",
        epochs: int | None = None,
    ):
        super().__init__()
        self.folder = pathlib.Path(folder)
        self.best_path = pathlib.Path(best_path)
        self.state = state
        self.monitor = monitor
        self.write = write  # False on non-chief workers: they take part in training but write nothing
        self.keep, self.epochs = keep, epochs
        self.average = read_average(self.folder, state)

    def _update_average(self) -> None:
        weights = self.model.get_weights()
        if self.average is None:
            self.average = weights
            return
        m = AVERAGE_MOMENTUM
        self.average = [
            m * a + (1 - m) * w if np.issubdtype(w.dtype, np.floating) else w for a, w in zip(self.average, weights)
        ]

    def _write_final_models(self) -> None:
        """``last.keras`` (the weights as they are) and ``average.keras`` (the moving average swapped in)."""
        run_dir = self.best_path.parent
        save_model_atomically(self.model, run_dir / LAST_FILE)
        current = self.model.get_weights()
        self.model.set_weights(self.average)
        try:
            save_model_atomically(self.model, run_dir / AVERAGE_FILE)
        finally:
            self.model.set_weights(current)
        if self.keep != "best":
            _copy_atomically(run_dir / (LAST_FILE if self.keep == "last" else AVERAGE_FILE), self.best_path)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._update_average()
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
        if (improved and self.keep == "best") or not self.best_path.exists():
            save_model_atomically(self.model, self.best_path)
        if self.epochs is not None and epoch + 1 >= self.epochs:
            self._write_final_models()
        weights = f"epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(str(self.folder / weights))
        average = f"average-{epoch + 1:04d}.npz"
        _save_average(self.folder / average, self.average)
        previous = (self.state.weights, self.state.average)
        self.state.epoch, self.state.weights, self.state.average = epoch + 1, weights, average
        state = dataclasses.asdict(self.state)
        state["best_dice"] = None if not math.isfinite(self.state.best_dice) else self.state.best_dice
        files.atomic_write_text(self.folder / STATE_FILE, json.dumps(state, indent=2), sync=True)
        for old, new in zip(previous, (weights, average)):
            if old and old != new and (self.folder / old).exists():
                (self.folder / old).unlink()
