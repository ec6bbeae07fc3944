"""Training configuration: one frozen, validated dataclass, named presets, and overrides from a JSON or
YAML file and from the command line (later sources win: defaults < preset < file < flags).

Every field declares its checker (``kseg.core.settings``) next to its default, and ``TrainConfig`` runs them all
when it is built, whatever the source; ``kseg.train`` gives its numeric flags the same checkers as argparse
types (``flag_type``), so a bad flag is named at once. Settings that only make sense together (warm-up
within the epochs, a class count only for folder datasets, ...) are checked after every field passed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from kseg.core import settings
from kseg.core.errors import KsegError
from kseg.data.augment import AUGMENTATIONS
from kseg.models import MODEL_PRESETS
from kseg.tasks.losses import LOSS_NAMES

TASK_NAMES = ("semantic", "instances", "keypoints")  # kseg.tasks.NAMES, without importing the tasks' TensorFlow code

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multiworker", "tpu")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
#: Which weights a run keeps as its model (best.keras): the epoch with the best validation score, the last
#: epoch, or an exponential moving average of the weights over epochs (kseg.training.checkpoints).
KEEP_CHOICES = ("best", "last", "average")
#: Cross-validation folds: 2 at least; nnU-Net uses 5; more than 10 leaves tiny validation folds on PH2.
MAX_FOLDS = 10

#: The presets train 12-120 epochs; a thousand times more is a typo (``--epochs 1e23``), not a plan.
MAX_EPOCHS = 100_000
#: An epoch of PH2 is 20 steps of 8 images, of MADS about 120: a million steps is a typo too.
MAX_STEPS_PER_EPOCH = 1_000_000
#: Model input sides: the models halve the input up to 5 times, so below 16 little is left; at 4096x4096 one
#: image's activations in a U-Net already take tens of GB.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 16, 4096
#: A config file is a few dozen fields; a bigger file is not one.
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(KsegError, ValueError):
    """A configuration value is invalid; the message names the field."""


def parse_image_size(value) -> tuple[int, int]:
    """``256``, ``"256"``, ``"192x256"``, ``"192,256"`` or ``(192, 256)`` -> ``(height, width)``."""
    return _checked(_FIELDS["image_size"], value)


def _preset_name(value) -> str:
    return settings.one_of(sorted(TRAINING_PRESETS))(value)


def setting(default, check, *, optional: bool = False, label: str | None = None):
    """A ``TrainConfig`` field: its default and the checker every value of it passes; ``optional`` fields
    also take ``None`` (null in a file: automatic, or not used). ``label`` names it in messages."""
    return dataclasses.field(default=default, metadata={"check": check, "optional": optional, "label": label})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does; saved as ``config.json`` in the run directory. Each
    field names its checker; the comments and ``kseg.core.settings`` say why each bound is where it is."""

    preset: str | None = setting(None, _preset_name, optional=True)
    # What the model predicts (kseg.tasks): a class per pixel, or every person their own mask. The dataset
    # must hold masks of the same kind.
    task: str = setting("semantic", settings.one_of(TASK_NAMES))
    dataset: str = setting("tfds_ph2/ph2", settings.dataset_name)
    model_preset: str = setting("unet", settings.one_of(sorted(MODEL_PRESETS)))  # flag --model
    image_size: tuple = setting(
        (256, 256), settings.image_size(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE), label="image_size (--image-size)"
    )
    batch_size: int = setting(8, settings.BATCH_SIZE)
    epochs: int = setting(100, settings.int_in(1, MAX_EPOCHS))
    # The presets peak at 1e-3 to 3e-3; 10 leaves room for SGD experiments and stops typos (1e3); 0 trains nothing.
    learning_rate: float = setting(2e-3, settings.float_in(0, 10, low_open=True))
    loss: str = setting("bce_dice", settings.one_of(LOSS_NAMES))
    seed: int = setting(0, settings.SEED)
    output_dir: str = setting("runs/ph2-unet", settings.path("a folder path"))
    manual_dir: str | None = setting(None, settings.path("a folder path"), optional=True)  # TFDS datasets only
    data_dir: str | None = setting(None, settings.path("a folder path"), optional=True)
    strategy: str = setting("auto", settings.one_of(STRATEGIES))
    mixed_precision: bool = setting(False, settings.boolean)
    jit_compile: bool = setting(False, settings.boolean)
    optimizer: str = setting("adamw", settings.one_of(OPTIMIZERS))
    # Decoupled decay shrinks each weight by learning_rate * weight_decay per step; useful values are 1e-5 to
    # 1e-1, and above 1 the decay would outweigh the gradient.
    weight_decay: float = setting(1e-4, settings.float_in(0, 1))
    schedule: str = setting("cosine", settings.one_of(SCHEDULES))
    # None: a tenth of the epochs, at most 3; fewer than the epochs.
    warmup_epochs: int | None = setting(None, settings.int_in(0, MAX_EPOCHS - 1), optional=True)
    augmentation: str = setting("medium", settings.one_of(sorted(AUGMENTATIONS)))
    dropout: float = setting(0.0, settings.float_in(0, 1, high_open=True))  # 1 would drop everything
    # Pretrained encoders: epochs with the encoder frozen (the decoder warms up); at most the epochs.
    freeze_encoder_epochs: int = setting(0, settings.int_in(0, MAX_EPOCHS))
    # Pretrained encoders: encoder learning rate / decoder learning rate; at most 1, as the encoder starts
    # trained and the decoder does not.
    encoder_lr_multiplier: float = setting(1.0, settings.float_in(0, 1, low_open=True))
    steps_per_epoch: int | None = setting(None, settings.int_in(1, MAX_STEPS_PER_EPOCH), optional=True)
    num_classes: int | None = setting(None, settings.NUM_CLASSES, optional=True)  # folder datasets only
    threshold: float = setting(0.5, settings.THRESHOLD)
    tpu: str | None = setting(None, settings.path("a TPU name or grpc:// address"), optional=True)  # --strategy tpu
    # Start from another run's weights, layer by layer where names and shapes agree (e.g. an instance model from
    # a semantic person model: the U-Net and its person/background logits are the same layers).
    init_weights: str | None = setting(None, settings.path("a .keras file or run directory"), optional=True)
    # Which weights become best.keras (KEEP_CHOICES); last.keras and average.keras are written beside it.
    keep: str = setting("best", settings.one_of(KEEP_CHOICES))
    # Cross-validation (kseg.training.folds): `folds` models over train+validation, each holding one fold
    # out; `fold` trains that one alone (the others may train in other processes). test is never used.
    folds: int | None = setting(None, settings.int_in(2, MAX_FOLDS), optional=True)
    fold: int | None = setting(None, settings.int_in(0, MAX_FOLDS - 1), optional=True)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _checked(field, getattr(self, field.name)))
        self._check_together()

    def _check_together(self):
        """Rules between fields, once each field is of its type and in its range."""

        def fail(field, message):
            raise ConfigError(f"{field}: {message}")

        if self.has_pretrained_encoder and any(side % 32 for side in self.image_size):
            nearest = "x".join(str(max(32, 32 * round(side / 32))) for side in self.image_size)
            fail(
                "image_size",
                f"expected sides that are multiples of 32 for {self.model_preset} (its pretrained encoder "
                f"halves the image 5 times), e.g. {nearest}, got {self.image_size!r}",
            )
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            fail(
                "warmup_epochs",
                f"expected an integer in [0, epochs={self.epochs}) or null for automatic, got {self.warmup_epochs}",
            )
        if self.freeze_encoder_epochs > self.epochs:
            fail(
                "freeze_encoder_epochs",
                f"expected an integer in [0, epochs={self.epochs}], got {self.freeze_encoder_epochs}",
            )
        if self.freeze_encoder_epochs and not self.has_pretrained_encoder:
            fail(
                "freeze_encoder_epochs",
                f"expected 0: model preset {self.model_preset!r} has no pretrained encoder to freeze (use "
                f"unet-lite0, unet-vgg16 or segnet-vgg16), got {self.freeze_encoder_epochs}",
            )
        if self.encoder_lr_multiplier != 1.0 and not self.has_pretrained_encoder:
            fail(
                "encoder_lr_multiplier (--encoder-lr-multiplier)",
                f"applies to models with a pretrained encoder only (unet-lite0, unet-vgg16, segnet-vgg16); "
                f"{self.model_preset!r} has none (got {self.encoder_lr_multiplier})",
            )
        if self.warmup_epochs is not None and self.schedule != "cosine":
            fail(
                "warmup_epochs (--warmup-epochs)",
                f"applies to the cosine schedule only (its linear warm-up); the schedule is {self.schedule!r} "
                f"(got {self.warmup_epochs})",
            )
        try:
            settings.check_num_classes_applies(self.num_classes, self.dataset)
        except settings.SettingError as e:
            fail("num_classes (--num-classes)", e)
        with_heads = self.task in ("instances", "keypoints")
        if with_heads and MODEL_PRESETS[self.model_preset][0] != "unet":
            fail(
                "model_preset (--model)",
                f"the {self.task} task puts its heads on a U-Net decoder: use unet-lite0 or a unet-* preset, got "
                f"{self.model_preset!r}",
            )
        if with_heads and self.strategy == "multiworker":
            fail(
                "strategy (--strategy)", f"the {self.task} task trains with model.fit (every strategy but multiworker)"
            )
        if self.task == "instances" and self.num_classes not in (None, 1):
            fail("num_classes (--num-classes)", f"the instances task has one class (person); got {self.num_classes}")
        if self.task == "keypoints" and self.num_classes is not None:
            fail("num_classes (--num-classes)", f"the keypoints task has a heatmap per joint; got {self.num_classes}")
        if self.manual_dir is not None and not settings.is_tfds_dataset(self.dataset):
            what = "a folder dataset" if settings.is_folder_dataset(self.dataset) else "a COCO file"
            fail(
                "manual_dir (--manual-dir)",
                f"applies to TFDS datasets only (a build reads its download there); {settings.shown(self.dataset)} "
                f"is {what}, read as it is (got {settings.shown(self.manual_dir)})",
            )
        if self.fold is not None and self.folds is None:
            fail("fold (--fold)", f"applies to cross-validation runs only: add --folds N (got {self.fold})")
        if self.fold is not None and self.fold >= self.folds:
            fail("fold (--fold)", f"expected an integer in [0, folds={self.folds}), got {self.fold}")
        if self.folds is not None and self.task != "semantic":
            fail(
                "folds (--folds)",
                f"cross-validation ensembles average probabilities, which semantic models give; the {self.task} "
                f"task groups its outputs into instances or joints first (got {self.folds})",
            )
        if self.tpu is not None and self.strategy != "tpu":
            fail(
                "tpu (--tpu)",
                f"applies to strategy 'tpu' only, and the strategy is {self.strategy!r} "
                f"(got {settings.shown(self.tpu)})",
            )

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


def _checked(field: dataclasses.Field, value):
    if value is None and field.metadata["optional"]:
        return None
    try:
        return field.metadata["check"](value)
    except settings.Invalid as e:
        raise ConfigError(f"{field.metadata['label'] or field.name}: {e}") from None


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flag_type(name: str):
    """The checker of field ``name``, as the argparse ``type=`` of its flag: a bad flag is refused with the
    same words as a bad value in a config file."""
    return _FIELDS[name].metadata["check"]


#: Named starting points; ``kseg.train --preset NAME`` then any flag on top.
TRAINING_PRESETS: dict[str, dict] = {
    # PH2 images are 4:3; 192x256 keeps their shape. unet-small in bfloat16 fits 120 epochs in the time
    # budget on 2 CPU cores, where the base-32 unet fits far fewer (figures: docs/benchmarks.md).
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
    # Pretrained encoders (docs/library.md): the decoder trains alone while the encoder is frozen,
    # then both, the encoder at a tenth of the rate. On PH2 (3 bfloat16 and 2 float32 seeds, docs/benchmarks.md):
    # the last epoch, not the best of 20 validation images (which picked early epochs in bfloat16 and lost
    # 0.006-0.008 test Dice); bfloat16 where it pays (AMX: 1.1x a run), as good as float32 with the last epoch.
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
        mixed_precision=True,
        keep="last",
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
    # on 2 CPU cores (docs/benchmarks.md).
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
    # Every person their own mask on Penn-Fudan (100 photos to learn from): the Lite0 U-Net with
    # Panoptic-DeepLab's centre and offset heads (kseg.tasks.instances). 320x416 keeps the photos' shape
    # (median 380x479); the epochs fit the 45-minute budget on 2 CPU cores (docs/benchmarks.md).
    "pennfudan-instances": dict(
        task="instances",
        dataset="tfds_ph2/pennfudan",
        model_preset="unet-lite0",
        image_size=(320, 416),
        batch_size=8,
        epochs=36,
        learning_rate=1e-3,
        loss="bce_dice",
        augmentation="people",
        freeze_encoder_epochs=3,
        encoder_lr_multiplier=0.1,
        output_dir="runs/pennfudan-instances",
    ),
    # One person's 14 joints on LSPET (sports photos, the person ~150 px tall): heatmaps at stride 4 on the
    # Lite0 U-Net's decoder (kseg.tasks.keypoints); flips swap left and right joints. 30 epochs: test PCK@0.2
    # 0.34 against 0.32 for 20 (validation still rose after epoch 20), in ~31 minutes on 2 CPU cores
    # (docs/benchmarks.md).
    "lspet-keypoints": dict(
        task="keypoints",
        dataset="tfds_ph2/lspet",
        model_preset="unet-lite0",
        image_size=(128, 128),
        batch_size=16,
        epochs=30,
        learning_rate=2e-3,
        loss="bce_dice",
        augmentation="pose",
        mixed_precision=True,  # bfloat16 where the CPU has AMX (1.2x here), float32 elsewhere (kseg.core.distribute)
        freeze_encoder_epochs=1,
        encoder_lr_multiplier=0.3,
        output_dir="runs/lspet-keypoints",
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
DEFAULT_PRESET = "ph2-unet-lite0"  # the best PH2 recipe (docs/benchmarks.md)
FIELDS = set(_FIELDS)
#: Older spellings of fields, accepted in config files and in the config.json of earlier runs.
FIELD_ALIASES = {"model": "model_preset"}


def normalize_fields(values: dict) -> dict:
    """Dashes to underscores and old field names to current ones."""
    values = {k.replace("-", "_"): v for k, v in values.items()}
    return {FIELD_ALIASES.get(k, k): v for k, v in values.items()}


def read_config_file(path) -> dict:
    """Values from a ``.json`` or ``.yaml``/``.yml`` file; unknown keys are an error naming them. The values
    are checked by ``TrainConfig`` (``resolve``), like those of flags."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; expected a .json or .yaml file")
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist; expected a .json or .yaml file")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path}: {size} bytes; expected a config file of at most {MAX_CONFIG_BYTES} bytes"
            )
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read ({settings.clip(e)})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001  (both parsers have their own error types; deep nesting: RecursionError)
        raise ConfigError(f"config file {path}: cannot parse ({settings.clip(e)})") from None
    if values is None:  # an empty YAML file
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of field names to values, got {settings.shown(values)}"
        )
    keys = [key for key in values if not isinstance(key, str)]
    if keys:
        raise ConfigError(f"config file {path}: expected field names, got {settings.shown(keys[0])}")
    values = normalize_fields(values)
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown field(s) {settings.bounded(unknown)}; known fields: {sorted(FIELDS)}"
        )
    return values


def resolve(file_values: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the preset (from ``overrides``, the file, or ``DEFAULT_PRESET``), then the file, then
    the command-line overrides. Every value is checked by ``TrainConfig``, whichever source it came from."""
    file_values = normalize_fields(file_values or {})
    overrides = normalize_fields({k: v for k, v in (overrides or {}).items() if v is not None})
    name = overrides.pop("preset", file_values.pop("preset", None))
    name = _checked(_FIELDS["preset"], DEFAULT_PRESET if name is None else name)
    values = {**TRAINING_PRESETS[name], **file_values, **overrides, "preset": name}
    try:
        return TrainConfig(**values)
    except TypeError as e:  # a field name TrainConfig does not have (callers in Python)
        raise ConfigError(settings.clip(e)) from None
