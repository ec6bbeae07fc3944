"""Training configuration: one frozen, validated dataclass, named presets, and overrides from a JSON or
YAML file and from the command line (later sources win: defaults < preset < file < flags)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from kseg.augment import AUGMENTATIONS
from kseg.losses import LOSS_NAMES
from kseg.models import MODEL_PRESETS

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multiworker", "tpu")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does; saved as ``config.json`` in the run directory."""

    preset: str | None = None
    dataset: str = "tfds_ph2/ph2"
    model: str = "unet"
    image_size: tuple = (256, 256)
    batch_size: int = 8
    epochs: int = 100
    learning_rate: float = 2e-3
    loss: str = "bce_dice"
    seed: int = 0
    output_dir: str = "runs/ph2-unet"
    manual_dir: str | None = None
    data_dir: str | None = None
    strategy: str = "auto"
    mixed_precision: bool = False
    jit_compile: bool = False
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int | None = None  # None: a tenth of the epochs, at most 3
    augmentation: str = "medium"
    dropout: float = 0.0
    steps_per_epoch: int | None = None
    num_classes: int | None = None  # folder datasets only; TFDS datasets say themselves
    threshold: float = 0.5
    tpu: str | None = None  # TPU name or address for the tpu strategy

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int) or (isinstance(size, str) and size.isdigit()):
            size = (int(size), int(size))
        elif isinstance(size, str):
            size = tuple(int(v) for v in size.lower().replace("x", ",").split(","))
        object.__setattr__(self, "image_size", tuple(int(v) for v in size))
        self._check()

    def _check(self):
        def fail(field, expected):
            raise ConfigError(f"{field}: expected {expected}, got {getattr(self, field)!r}")

        if len(self.image_size) != 2 or min(self.image_size) < 16:
            fail("image_size", "(height, width) of at least 16, e.g. 256 or 256x320")
        if self.model not in MODEL_PRESETS:
            fail("model", f"one of {sorted(MODEL_PRESETS)}")
        if self.loss not in LOSS_NAMES:
            fail("loss", f"one of {list(LOSS_NAMES)}")
        if self.strategy not in STRATEGIES:
            fail("strategy", f"one of {list(STRATEGIES)}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"one of {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {list(SCHEDULES)}")
        if self.augmentation not in AUGMENTATIONS:
            fail("augmentation", f"one of {sorted(AUGMENTATIONS)}")
        for field in ("batch_size", "epochs"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                fail(field, "an integer >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            fail("steps_per_epoch", "an integer >= 1 or null")
        if not self.learning_rate > 0:
            fail("learning_rate", "a number > 0")
        if self.weight_decay < 0:
            fail("weight_decay", "a number >= 0")
        warmup = self.warmup_epochs
        if warmup is not None and (not isinstance(warmup, int) or warmup < 0 or 0 < self.epochs <= warmup):
            fail("warmup_epochs", f"an integer in [0, epochs={self.epochs}) or null for automatic")
        if not 0 <= self.dropout < 1:
            fail("dropout", "a number in [0, 1)")
        if not 0 < self.threshold < 1:
            fail("threshold", "a probability in (0, 1)")
        if not self.dataset.startswith("folder:") and "/" not in self.dataset:
            fail("dataset", "a TFDS name like tfds_ph2/ph2 or folder:PATH")

    @property
    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(3, self.epochs // 10)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        result["image_size"] = list(self.image_size)
        return result


#: Named starting points; ``kseg.train --preset NAME`` then any flag on top.
TRAINING_PRESETS: dict[str, dict] = {
    # PH2 images are 4:3; 192x256 keeps their shape. unet-small in bfloat16 trains 120 epochs in about
    # 25 minutes on 2 CPU cores (bench/train.py); the base-32 unet costs 4x as much per epoch.
    "ph2-unet": dict(dataset="tfds_ph2/ph2", model="unet-small", image_size=(192, 256), batch_size=8, epochs=120,
                     learning_rate=3e-3, loss="bce_dice", augmentation="strong", mixed_precision=True,
                     output_dir="runs/ph2-unet"),
    "ph2-segnet": dict(dataset="tfds_ph2/ph2", model="segnet", image_size=(256, 256), batch_size=8, epochs=100,
                       learning_rate=2e-3, loss="bce_dice", augmentation="strong", output_dir="runs/ph2-segnet"),
    # MADS frames come in both orientations, so the input is square.
    "mads-unet": dict(dataset="tfds_ph2/mads", model="unet-small", image_size=(256, 256), batch_size=8, epochs=30,
                      learning_rate=3e-3, loss="bce_dice", augmentation="medium", mixed_precision=True,
                      output_dir="runs/mads-unet"),
    "synthetic-unet": dict(dataset="tfds_ph2/synthetic", model="unet-small", image_size=(128, 128), batch_size=16,
                           epochs=12, learning_rate=3e-3, loss="bce_dice", augmentation="medium",
                           output_dir="runs/synthetic-unet"),
}
DEFAULT_PRESET = "ph2-unet"
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def read_config_file(path) -> dict:
    """Values from a ``.json`` or ``.yaml``/``.yml`` file; unknown keys are an error naming them."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # both parsers have their own error types
        raise ConfigError(f"config file {path}: cannot parse ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping of field names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field(s) {unknown}; known fields: {sorted(FIELDS)}")
    return values


def resolve(preset: str | None = None, file_values: dict | None = None, overrides: dict | None = None
            ) -> TrainConfig:
    """Defaults, then the preset (from ``overrides``, the file, or ``DEFAULT_PRESET``), then the file, then
    the command-line overrides."""
    file_values = dict(file_values or {})
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    name = overrides.pop("preset", None) or preset or file_values.pop("preset", None) or DEFAULT_PRESET
    file_values.pop("preset", None)
    if name not in TRAINING_PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(TRAINING_PRESETS)}, got {name!r}")
    values = {**TRAINING_PRESETS[name], **file_values, **overrides, "preset": name}
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
