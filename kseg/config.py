"""Training configuration: one frozen, validated dataclass, named presets, and overrides from a JSON or
YAML file and from the command line (later sources win: defaults < preset < file < flags)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from kseg.augment import AUGMENTATIONS
from kseg.errors import KsegError
from kseg.losses import LOSS_NAMES
from kseg.models import MODEL_PRESETS

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multiworker", "tpu")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


class ConfigError(KsegError, ValueError):
    """A configuration value is invalid; the message names the field."""


def parse_image_size(value) -> tuple[int, int]:
    """``256``, ``"256"``, ``"192x256"``, ``"192,256"`` or ``(192, 256)`` -> ``(height, width)``."""
    try:
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return int(value), int(value)
        parts = value.lower().replace("x", ",").split(",") if isinstance(value, str) else value
        return tuple(int(v) for v in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            f"image_size (--image-size): expected a size like 256 or HxW like 192x256, got {value!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does; saved as ``config.json`` in the run directory."""

    preset: str | None = None
    dataset: str = "tfds_ph2/ph2"
    model_preset: str = "unet"  # a name in kseg.models.MODEL_PRESETS (flag --model)
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
    freeze_encoder_epochs: int = 0  # pretrained encoders: epochs with the encoder frozen (decoder warms up)
    encoder_lr_multiplier: float = 1.0  # pretrained encoders: encoder learning rate / decoder learning rate
    steps_per_epoch: int | None = None
    num_classes: int | None = None  # folder datasets only; TFDS datasets say themselves
    threshold: float = 0.5
    tpu: str | None = None  # TPU name or address for the tpu strategy

    def __post_init__(self):
        object.__setattr__(self, "image_size", parse_image_size(self.image_size))
        self._check()

    def _check(self):
        def fail(field, expected):
            raise ConfigError(f"{field}: expected {expected}, got {getattr(self, field)!r}")

        if len(self.image_size) != 2 or min(self.image_size) < 16:
            fail("image_size", "(height, width) of at least 16, e.g. 256 or 256x320")
        if self.model_preset not in MODEL_PRESETS:
            fail("model_preset", f"one of {sorted(MODEL_PRESETS)}")
        if self.has_pretrained_encoder and any(side % 32 for side in self.image_size):
            nearest = "x".join(str(max(32, 32 * round(side / 32))) for side in self.image_size)
            fail(
                "image_size",
                f"sides that are multiples of 32 for {self.model_preset} (its pretrained encoder halves "
                f"the image 5 times), e.g. {nearest}",
            )
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
        freeze = self.freeze_encoder_epochs
        if not isinstance(freeze, int) or not 0 <= freeze <= self.epochs:
            fail("freeze_encoder_epochs", f"an integer in [0, epochs={self.epochs}]")
        if freeze and not self.has_pretrained_encoder:
            fail(
                "freeze_encoder_epochs",
                f"0: model preset {self.model_preset!r} has no pretrained encoder to "
                f"freeze (use unet-lite0, unet-vgg16 or segnet-vgg16)",
            )
        if not 0 < self.encoder_lr_multiplier <= 1:
            fail("encoder_lr_multiplier", "a number in (0, 1]")
        if not 0 <= self.dropout < 1:
            fail("dropout", "a number in [0, 1)")
        if not 0 < self.threshold < 1:
            fail("threshold", "a probability in (0, 1)")
        if not self.dataset.startswith("folder:") and "/" not in self.dataset:
            fail("dataset", "a TFDS name like tfds_ph2/ph2 or folder:PATH")

    @property
    def has_pretrained_encoder(self) -> bool:
        return MODEL_PRESETS[self.model_preset][1].get("encoder") is not None

    @property
    def resolved_warmup_epochs(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(3, self.epochs // 10)

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        result["image_size"] = list(self.image_size)
        return result


#: Named starting points; ``kseg.train --preset NAME`` then any flag on top.
TRAINING_PRESETS: dict[str, dict] = {
    # PH2 images are 4:3; 192x256 keeps their shape. unet-small in bfloat16 fits 120 epochs in the time
    # budget on 2 CPU cores, where the base-32 unet fits far fewer (figures: README, "Training").
    "ph2-unet": dict(
        dataset="tfds_ph2/ph2",
        model_preset="unet-small",
        image_size=(192, 256),
        batch_size=8,
        epochs=120,
        learning_rate=3e-3,
        loss="bce_dice",
        augmentation="strong",
        mixed_precision=True,
        output_dir="runs/ph2-unet",
    ),
    "ph2-segnet": dict(
        dataset="tfds_ph2/ph2",
        model_preset="segnet",
        image_size=(256, 256),
        batch_size=8,
        epochs=100,
        learning_rate=2e-3,
        loss="bce_dice",
        augmentation="strong",
        output_dir="runs/ph2-segnet",
    ),
    # MADS frames come in both orientations, so the input is square.
    "mads-unet": dict(
        dataset="tfds_ph2/mads",
        model_preset="unet-small",
        image_size=(256, 256),
        batch_size=8,
        epochs=30,
        learning_rate=3e-3,
        loss="bce_dice",
        augmentation="medium",
        mixed_precision=True,
        output_dir="runs/mads-unet",
    ),
    # Pretrained encoders (README, "Pretrained encoders"): the decoder trains alone while the encoder is frozen,
    # then both, the encoder at a tenth of the rate. float32: on CPUs without AMX, bfloat16 is much slower
    # once the depthwise encoder trains (bench/models.py).
    "ph2-unet-lite0": dict(
        dataset="tfds_ph2/ph2",
        model_preset="unet-lite0",
        image_size=(192, 256),
        batch_size=8,
        epochs=80,
        learning_rate=1e-3,
        loss="bce_dice",
        augmentation="strong",
        freeze_encoder_epochs=5,
        encoder_lr_multiplier=0.1,
        output_dir="runs/ph2-unet-lite0",
    ),
    # SegNet on the pretrained VGG16: 31.8 GMACs an image (18x the Lite0 U-Net, most of it in the decoder at
    # VGG widths), so the 45-minute budget on 2 CPU cores holds 14 epochs; on a GPU give it more (--epochs).
    "ph2-segnet-vgg16": dict(
        dataset="tfds_ph2/ph2",
        model_preset="segnet-vgg16",
        image_size=(192, 256),
        batch_size=8,
        epochs=14,
        learning_rate=1e-3,
        loss="bce_dice",
        augmentation="strong",
        freeze_encoder_epochs=4,
        encoder_lr_multiplier=0.1,
        output_dir="runs/ph2-segnet-vgg16",
    ),
    # 288x288 and 40 epochs: test IoU 0.891 against 0.871 at 256x256 and 30 epochs (3 seeds), in ~23 minutes
    # on 2 CPU cores (README, "Benchmarks").
    "mads-unet-lite0": dict(
        dataset="tfds_ph2/mads",
        model_preset="unet-lite0",
        image_size=(288, 288),
        batch_size=8,
        epochs=40,
        learning_rate=1e-3,
        loss="bce_dice",
        augmentation="medium",
        freeze_encoder_epochs=3,
        encoder_lr_multiplier=0.1,
        output_dir="runs/mads-unet-lite0",
    ),
    "synthetic-unet": dict(
        dataset="tfds_ph2/synthetic",
        model_preset="unet-small",
        image_size=(128, 128),
        batch_size=16,
        epochs=12,
        learning_rate=3e-3,
        loss="bce_dice",
        augmentation="medium",
        output_dir="runs/synthetic-unet",
    ),
}
DEFAULT_PRESET = "ph2-unet-lite0"  # the best PH2 recipe (README, "Benchmarks")
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
#: Older spellings of fields, accepted in config files and in the config.json of earlier runs.
FIELD_ALIASES = {"model": "model_preset"}


def normalize_fields(values: dict) -> dict:
    """Dashes to underscores and old field names to current ones."""
    values = {k.replace("-", "_"): v for k, v in values.items()}
    return {FIELD_ALIASES.get(k, k): v for k, v in values.items()}


def read_config_file(path) -> dict:
    """Values from a ``.json`` or ``.yaml``/``.yml`` file; unknown keys are an error naming them."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; expected a .json or .yaml file")
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist; expected a .json or .yaml file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read ({e})") from None
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
    values = normalize_fields(values)
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field(s) {unknown}; known fields: {sorted(FIELDS)}")
    return values


def resolve(file_values: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the preset (from ``overrides``, the file, or ``DEFAULT_PRESET``), then the file, then
    the command-line overrides."""
    file_values = normalize_fields(file_values or {})
    overrides = normalize_fields({k: v for k, v in (overrides or {}).items() if v is not None})
    name = overrides.pop("preset", None) or file_values.pop("preset", None) or DEFAULT_PRESET
    file_values.pop("preset", None)
    if name not in TRAINING_PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(TRAINING_PRESETS)}, got {name!r}")
    values = {**TRAINING_PRESETS[name], **file_values, **overrides, "preset": name}
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
