"""``python -m kseg.train``: train a segmentation model and leave a complete run directory.

The work is done by ``kseg.training`` (set-up, loops, checkpoints, final report); this module reads the
flags and the config file, and reports the outcome. Exit statuses: 0 done (or already finished), 1 the
training diverged, 2 bad flags, config or data, 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys

from kseg.core import cli, settings
from kseg.training import config as config_lib

PROG = "kseg.train"


# ------------------------------------------------------------------------------------------- flags ---


#: Logical CPU devices for mirrored training without GPUs: more replicas than this on one CPU only slow it.
LOGICAL_CPUS = settings.int_in(1, 64)


def build_parser() -> argparse.ArgumentParser:
    """Numeric flags are converted and checked by their config field's own checker; text flags (names,
    paths, --image-size) reach ``TrainConfig`` as given, which checks them with the file's values."""
    checked = config_lib.flag_type
    presets = ", ".join(config_lib.TRAINING_PRESETS)
    parser = argparse.ArgumentParser(
        prog="python -m kseg.train",
        description="Train a U-Net or SegNet. A preset sets good defaults; a --config file and then flags "
        f"override them. Presets: {presets} (default {config_lib.DEFAULT_PRESET}).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=None,
    )
    add = parser.add_argument
    add("--preset", help=f"named starting point: {presets}")
    add("--config", help="JSON or YAML file of config fields (same names as the flags, with underscores)")
    add(
        "--task",
        help="what the model predicts: semantic (a class per pixel) or instances (every person their own mask)",
    )
    add(
        "--dataset",
        help="tfds_ph2/ph2, tfds_ph2/mads, tfds_ph2/synthetic, tfds_ph2/pennfudan (instances), any TFDS name, "
        "folder:PATH (PATH/images + PATH/masks, or PATH/instances for instance label images, optionally inside "
        "train/ validation/ test/), or coco:FILE.json (COCO instances, images next to it)",
    )
    add("--model-preset", "--model", dest="model_preset", help="model and size: " + ", ".join(config_lib.MODEL_PRESETS))
    add("--image-size", help="model input size, 256 or HxW like 256x320 (divisible by 2**depth)")
    add("--batch-size", type=checked("batch_size"), help="global batch size (split across replicas)")
    add("--epochs", type=checked("epochs"), help="number of epochs")
    add("--learning-rate", type=checked("learning_rate"), help="peak learning rate (after warm-up)")
    add("--loss", help="bce, dice, bce_dice, focal or tversky (categorical versions for multi-class)")
    add("--seed", type=checked("seed"), help="seed for weights, shuffling and augmentation")
    add("--output-dir", help="run directory (rerunning with the same one resumes; a finished run is kept)")
    add("--manual-dir", help="manual download folder: builds the TFDS config on first use")
    add("--data-dir", help="TFDS data dir (default ~/tensorflow_datasets)")
    add("--strategy", help="auto, default, one_device, mirrored, multiworker (TF_CONFIG) or tpu")
    add(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        help="float16 on GPUs, bfloat16 on TPUs and on CPUs where it pays (AMX, AVX512_BF16); outputs stay float32",
    )
    add("--jit-compile", action=argparse.BooleanOptionalAction, help="compile the train step with XLA")
    add("--optimizer", help="adamw, adam or sgd (momentum 0.9, Nesterov)")
    add("--weight-decay", type=checked("weight_decay"), help="decoupled weight decay")
    add("--schedule", help="cosine (with linear warm-up) or constant")
    add(
        "--warmup-epochs",
        type=checked("warmup_epochs"),
        help="epochs of linear warm-up (default: a tenth of the epochs, at most 3)",
    )
    add("--augmentation", help="none, flips, light, medium or strong")
    add("--dropout", type=checked("dropout"), help="dropout at the bottleneck")
    add(
        "--freeze-encoder-epochs",
        type=checked("freeze_encoder_epochs"),
        help="pretrained encoders: epochs with the encoder frozen while the decoder learns (then fine-tuned)",
    )
    add(
        "--encoder-lr-multiplier",
        type=checked("encoder_lr_multiplier"),
        help="pretrained encoders: the encoder's learning rate as a fraction of the decoder's once it trains",
    )
    add(
        "--steps-per-epoch",
        type=checked("steps_per_epoch"),
        help="batches per epoch (default: one pass over the training split)",
    )
    add("--num-classes", type=checked("num_classes"), help="folder datasets with multi-class masks: number of classes")
    add("--threshold", type=checked("threshold"), help="foreground probability threshold for metrics and reports")
    add("--tpu", help="TPU name or grpc:// address for --strategy tpu")
    add(
        "--init-weights",
        help="start from the weights of another run (.keras file or run directory) wherever layer names and "
        "shapes agree, e.g. an instances run from a semantic person run",
    )
    add(
        "--keep",
        help="which weights become best.keras: best (the best validation epoch), last (the last epoch) or average "
        "(a moving average of the weights over epochs); last.keras and average.keras are written beside it",
    )
    add(
        "--folds",
        type=checked("folds"),
        help="cross-validation: train N models over train+validation (each validated on the fold it did not "
        "see), choose post-processing on all out-of-fold predictions, and keep the N as one averaged model",
    )
    add("--fold", type=checked("fold"), help="with --folds: train only this fold (0 to N-1), e.g. on another machine")
    add(
        "--logical-cpus",
        type=LOGICAL_CPUS,
        default=1,
        help="split the CPU into N logical devices (mirrored training without GPUs)",
    )
    cli.add_verbose_flag(parser)
    return parser


def config_from_args(argv=None) -> tuple[config_lib.TrainConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    file_values = config_lib.read_config_file(args.config) if args.config else {}
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "logical_cpus", "verbose")}
    return config_lib.resolve(file_values=file_values, overrides=overrides), args


def _interrupted(config: config_lib.TrainConfig | None) -> str:
    if config is None:
        return "nothing was trained"
    if config.folds is not None:
        return (
            f"finished folds are kept in {config.output_dir}; run the same command again to resume the fold "
            f"that was interrupted from its last epoch"
        )
    from kseg.training import checkpoints

    epoch = checkpoints.read_state(f"{config.output_dir}/checkpoints").epoch
    if not epoch:
        return f"no epoch had finished, so nothing was kept in {config.output_dir}"
    return (
        f"epoch {epoch} of {config.epochs} is the last one kept in {config.output_dir}/checkpoints; run the "
        f"same command again to resume from there"
    )


def main(argv=None) -> int:
    resolved = []

    def work():
        config, args = config_from_args(argv)
        resolved.append(config)
        if args.logical_cpus > 1:
            from kseg.core.distribute import split_cpu

            split_cpu(args.logical_cpus)
        from kseg import data, training

        with data.reraise_read_errors():  # a file that breaks mid-training: its name, not a tf.data traceback
            training.run(config)

    return cli.run(PROG, work, interrupted=lambda: _interrupted(resolved[0] if resolved else None))


if __name__ == "__main__":
    sys.exit(main())
