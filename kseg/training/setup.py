"""Everything a training run needs before its first step, the same for every loop: seeding, precision,
both pipelines, model and optimizer built in the strategy's scope, the output folder and disk-space check,
``config.json`` and the state to resume from (Model Garden's ``Task`` idea, as one function)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import pathlib

import keras
import tensorflow as tf

from kseg import data, tasks
from kseg.core import distribute, files
from kseg.core.errors import UsageError
from kseg.data import folds
from kseg.data.augment import get_augmentation
from kseg.models.backbones import ENCODER_PREFIX, encoder_layers
from kseg.training import checkpoints, optimizers
from kseg.training.config import ConfigError, TrainConfig, normalize_fields

log = logging.getLogger(__name__)

#: Fields that may differ when a run is resumed: where things are and how they run, not what is trained.
RESUME_IGNORES = {"strategy", "data_dir", "manual_dir", "output_dir", "jit_compile", "preset"}


@dataclasses.dataclass
class TrainingSetup:
    config: TrainConfig
    strategy: tf.distribute.Strategy
    spec: data.DatasetSpec
    run_dir: pathlib.Path
    steps_per_epoch: int
    train_data: tf.data.Dataset
    validation_data: tf.data.Dataset | None
    model: keras.Model
    state: checkpoints.RunState
    chief: bool  # writes the run directory (every process but the non-chief multi-worker ones)
    task: object = None  # kseg.tasks: what the model predicts
    validation_callbacks: list = dataclasses.field(default_factory=list)  # the task's, before the checkpoint

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes


def config_changes(saved_path: pathlib.Path, config: TrainConfig, ignores) -> str | None:
    """The fields (other than ``ignores``) where ``config`` differs from the one saved at ``saved_path``, as
    ``field: saved -> now`` text; None when they agree or nothing was saved."""
    if not saved_path.exists():
        return None
    try:
        saved = normalize_fields(json.loads(saved_path.read_text()))
    except ValueError as e:
        raise ConfigError(f"{saved_path}: not valid JSON ({e}); choose a new --output-dir") from None
    current = config.to_dict()
    changed = sorted(k for k in current if k not in ignores and saved.get(k) != current[k])
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed) or None


def check_resumable(run_dir: pathlib.Path, config: TrainConfig) -> None:
    """Resuming with another config would silently mix two runs: refuse, naming the fields that differ."""
    if not (run_dir / "checkpoints" / checkpoints.STATE_FILE).exists():
        return
    details = config_changes(run_dir / "config.json", config, RESUME_IGNORES)
    if details:
        raise ConfigError(
            f"{run_dir} holds a run with another config ({details}); resume it with the same "
            f"settings or choose a new --output-dir"
        )


def split_selection(config: TrainConfig) -> dict[str, tuple[str, frozenset | None]]:
    """``{"train": (split, image ids), "validation": (...)}``: the dataset's own splits (ids None: all of
    them), or for fold ``config.fold`` of a folds run (``kseg.training.folds``) train+validation without the
    fold, and the fold. A fold's run directory sits in the folds run's, next to ``folds.json``."""
    if config.fold is None:
        return {"train": ("train", None), "validation": ("validation", None)}
    run_dir = pathlib.Path(config.output_dir).parent
    plan = folds.read(run_dir)
    if plan is None:
        raise UsageError(f"{run_dir} has no {folds.FOLDS_FILE}: train folds with kseg.train --folds N")
    return {"train": (plan.over, plan.trained_on(config.fold)), "validation": (plan.over, plan.held_out(config.fold))}


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    total = config.epochs * steps_per_epoch
    warmup = config.resolved_warmup_epochs * steps_per_epoch
    if config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate * 0.01 if warmup else config.learning_rate,
            decay_steps=max(total - warmup, 1),
            alpha=0.01,
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    else:
        learning_rate = config.learning_rate
    parts = {ENCODER_PREFIX: config.encoder_lr_multiplier} if config.encoder_lr_multiplier != 1.0 else {}
    if config.optimizer == "adamw":
        return optimizers.AdamW(learning_rate, weight_decay=config.weight_decay, lr_multipliers=parts)
    if config.optimizer == "adam":
        return optimizers.Adam(learning_rate, weight_decay=config.weight_decay or None, lr_multipliers=parts)
    return optimizers.SGD(
        learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None, lr_multipliers=parts
    )


def build_model(config: TrainConfig, num_classes: int, replicas: int = 1, class_names=()) -> keras.Model:
    """The configured model with its task's heads; with several replicas BN uses global-batch statistics, so
    every replica and worker keeps the same moving averages and the model matches single-device training.
    ``class_names``: the dataset's (a keypoint model names its joints)."""
    return tasks.get(config.task).build_model(config, replicas, num_classes=num_classes, class_names=class_names)


def compile_model(
    model: keras.Model,
    config: TrainConfig,
    num_classes: int,
    steps_per_epoch: int,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> None:
    """Optimizer, and the task's loss and metrics; under ``mixed_float16`` Keras wraps the optimizer for loss
    scaling. Pass the model's own ``optimizer`` to compile again after a change of what is trainable (the
    optimizer and its state carry over)."""
    model.compile(
        optimizer=optimizer or make_optimizer(config, steps_per_epoch),
        jit_compile=config.jit_compile,
        **tasks.get(config.task).compile_args(config, num_classes),
    )


# ------------------------------------------------------------------------------- encoder fine-tuning ---


def encoder_phases(config: TrainConfig, first_epoch: int) -> list[tuple[int, bool]]:
    """``(end_epoch, encoder_trainable)`` for the epochs still to run: first the decoder alone while the
    pretrained encoder is frozen, then both (the encoder at ``encoder_lr_multiplier`` times the rate)."""
    phases = []
    if first_epoch < config.freeze_encoder_epochs:
        phases.append((config.freeze_encoder_epochs, False))
    if max(first_epoch, config.freeze_encoder_epochs) < config.epochs:
        phases.append((config.epochs, True))
    return phases


def set_encoder_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or release the encoder's weights. Its batch norm layers stay frozen either way (statistics
    and scale): batches of 8 give noisy statistics, and the pretrained ones match real photos."""
    for layer in encoder_layers(model):
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)


def build_optimizer_for_every_phase(model: keras.Model) -> None:
    """Create the optimizer's slots for every variable any phase will train (the encoder too, while it is
    frozen), so the checkpoint layout is the same before and after the unfreeze point and a resume across
    it is exact."""
    if model.optimizer.built:
        return
    encoder = encoder_layers(model)
    frozen = [layer for layer in encoder if not layer.trainable]
    set_encoder_trainable(model, True)
    model.optimizer.build(model.trainable_variables)
    for layer in frozen:
        layer.trainable = False


@contextlib.contextmanager
def precision_scope(config: TrainConfig):
    """The run's precision policy while the model is built and trained; the caller's policy afterwards."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.mixed_precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def needed_bytes(model: keras.Model) -> int:
    """Room for two epoch checkpoints at once (the new one is written before the old one goes; weights and
    Adam's two moments each, and the weight average), best.keras and its temporary copy, last.keras and
    average.keras (weights only) and the logs."""
    return model.count_params() * 4 * (2 * 4 + 4) + 64 * 2**20


def copy_weights(source, model: keras.Model, quiet: bool = False) -> int:
    """Copies ``source``'s weights (a ``.keras`` file or a run directory's ``best.keras``) into every layer of
    ``model`` with the same name and weight shapes; returns how many layers were copied. A resumed run then
    restores its own checkpoint over them. None in common is an error: the source is not a relative."""
    from kseg.prediction import inference

    path = pathlib.Path(source)
    keras_file = path / "best.keras" if path.is_dir() else path
    if not keras_file.is_file():
        raise UsageError(f"--init-weights {source}: no such .keras file or run directory (with best.keras)")
    donor = inference.load_keras_model(keras_file)
    copied, skipped = 0, []
    for layer in donor.layers:
        if not layer.weights:
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError:
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(w.shape) for w in target.weights] != shapes:
            skipped.append(layer.name)
            continue
        target.set_weights(layer.get_weights())
        copied += 1
    if not copied:
        raise UsageError(
            f"--init-weights {keras_file}: no layer of it matches a layer of {model.name} by name and shape; "
            f"expected a run of the same model preset (e.g. unet-lite0 for unet-lite0)"
        )
    if not quiet:
        more = f"; {len(skipped)} with other shapes kept their own start ({', '.join(skipped[:3])})" if skipped else ""
        log.info(f"--init-weights: {copied} layers start from {keras_file}{more}")
    return copied


def prepare(
    config: TrainConfig, strategy: tf.distribute.Strategy, *, drop_remainder: bool = False, repeat: bool = False
) -> TrainingSetup:
    """Set up a run under ``strategy`` (created by the caller first: multi-worker collectives must be
    configured before anything initialises TensorFlow's runtime, and building a dataset does).

    ``drop_remainder``/``repeat``: the loop needs full batches or an endless stream (TPUs, the multi-worker
    loop); the ``fit`` loop on CPU and GPU takes one pass per epoch with the last batch partial.
    """
    chief = distribute.is_chief(strategy)
    run_dir = pathlib.Path(config.output_dir)
    if chief:
        check_resumable(run_dir, config)
        files.check_output_dir(run_dir)
    spec = data.dataset_spec(
        config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir, num_classes=config.num_classes
    )
    task = tasks.get(config.task)
    tasks.check_dataset(config.task, config.dataset, spec.kind)
    selection = split_selection(config)
    train_ids, validation_ids = selection["train"][1], selection["validation"][1]
    train_size = len(train_ids) if train_ids is not None else spec.split_sizes.get("train", 0)
    if train_size == 0:
        raise UsageError(f"{config.dataset} has no training examples")
    batches = train_size // config.batch_size if drop_remainder else math.ceil(train_size / config.batch_size)
    if batches == 0 and not config.steps_per_epoch:
        raise UsageError(
            f"{config.dataset} has {train_size} training examples, fewer than one batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    steps_per_epoch = config.steps_per_epoch or batches
    keras.utils.set_random_seed(config.seed)
    load = lambda split, **kw: data.load(
        config.dataset,
        selection.get(split, (split, None))[0],
        image_ids=selection.get(split, (split, None))[1],
        image_size=config.image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        num_classes=config.num_classes,
        **kw,
    )
    train_data = load(
        "train",
        augmentation=task.augmentation(get_augmentation(config.augmentation)),
        shuffle=True,
        drop_remainder=drop_remainder,
        repeat=repeat or config.steps_per_epoch is not None,
        targets=task.targets,
    )
    has_validation = bool(validation_ids) if validation_ids is not None else bool(spec.split_sizes.get("validation"))
    validation_data = load("validation", targets=task.targets) if has_validation else None
    validation_callbacks = task.validation_callbacks(load, spec.class_names) if has_validation else []
    if validation_data is None and chief:
        log.warning(
            f"{config.dataset} has no validation split: best.keras will be the last epoch's model (there is "
            f"nothing to choose the best epoch on); add a validation split to choose it"
        )

    with strategy.scope():
        model = build_model(config, spec.num_classes, strategy.num_replicas_in_sync, spec.class_names)
        if config.init_weights:
            copy_weights(config.init_weights, model, quiet=not chief)
        set_encoder_trainable(model, True)
        compile_model(model, config, spec.num_classes, steps_per_epoch)
        build_optimizer_for_every_phase(model)
    if chief:
        files.make_output_dir(run_dir, needed_bytes=needed_bytes(model))
        files.atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    state = checkpoints.restore(model, run_dir / "checkpoints")
    if chief and state.epoch:
        log.info(f"resuming {run_dir} after epoch {state.epoch} of {config.epochs}")
    return TrainingSetup(
        config,
        strategy,
        spec,
        run_dir,
        steps_per_epoch,
        train_data,
        validation_data,
        model,
        state,
        chief,
        task,
        validation_callbacks,
    )
