"""Benchmark whether kseg's input pipeline keeps up with training.

For each dataset it measures how many examples/s ``kseg.data.load(...)`` delivers (training split, resize,
in-memory cache, shuffle, repeat, batch, augmentation) once the cache is warm, and for each model preset
how many examples/s one training step consumes (Adam, ``bce_dice`` loss, ``default_metrics()``, fed from
in-memory tensors so that no input pipeline is involved). The headroom is the ratio of the two: well
above 1 means the pipeline is never what training waits for.

    .venv/bin/python bench/pipeline.py
    .venv/bin/python bench/pipeline.py --datasets tfds_ph2/synthetic --presets unet-small --steps 5

TFDS datasets are built on first use into a temporary data dir (or read from / built into ``--data-dir``);
ph2 and mads take their manual dirs, and ``folder:bodies`` its folder, from ``$KSEG_DATA_DIR`` or
``<repo>/../shared/data``. Both measurements run in one process, one after the other; during real training
the pipeline's threads and the training step share the same cores, so the headroom is an upper bound on a
small CPU. Timings on a small shared CPU are noisy; compare runs from the same machine only.
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (also puts the repository on sys.path and quiets TF's C++ logging)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import kseg  # noqa: E402,F401  (selects the TensorFlow backend before keras is imported)
from kseg import data as kdata  # noqa: E402
from kseg.models import MODEL_PRESETS, build_preset  # noqa: E402
from kseg.tasks.losses import get_loss  # noqa: E402
from kseg.tasks.metrics import default_metrics  # noqa: E402

DEFAULT_DATASETS = ("tfds_ph2/synthetic", "tfds_ph2/ph2", "folder:bodies")
MANUAL_DIRS = {"tfds_ph2/ph2": "PH2Dataset", "tfds_ph2/mads": "bodies"}  # sub-folders of the real data dir
COLUMNS = [
    ("dataset", "dataset"),
    ("train_examples", "train ex"),
    ("first_pass_examples_per_s", "1st pass ex/s"),
    ("pipeline_examples_per_s", "pipeline ex/s"),
    ("preset", "preset"),
    ("step_examples_per_s", "step ex/s"),
    ("headroom", "headroom"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEFAULT_DATASETS),
        metavar="NAME",
        help="kseg dataset names; folder:NAME with a relative NAME is looked up in the real data "
        f"dir (default: {' '.join(DEFAULT_DATASETS)})",
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["unet-small", "unet"],
        choices=list(MODEL_PRESETS),
        metavar="PRESET",
        help="model presets for the training step (default: unet-small unet)",
    )
    parser.add_argument("--batches", type=int, default=100, help="timed pipeline batches per dataset (default: 100)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per preset (default: 10)")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed training steps first, for tracing and one-off allocations (default: 2)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="square model input size (default: 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per batch and step (default: 8)")
    parser.add_argument("--augmentation", default="medium", help="augmentation preset (default: medium)")
    parser.add_argument(
        "--jit-compile",
        choices=["false", "true", "auto"],
        default="false",
        help="compile(jit_compile=...); kseg's training default is false (default: false)",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="also time model.fit fed by the real pipeline of the first dataset, per preset, to "
        "see the two share the CPU (costs warm-up + --steps more steps per preset)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="TFDS data dir to read built datasets from and build missing ones into "
        "(default: a temporary dir, removed afterwards)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="real data folder holding PH2Dataset/ and bodies/ (default: $KSEG_DATA_DIR or <repo>/../shared/data)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=common.RESULTS_DIR / "pipeline.json",
        help="JSON results file (default: bench/results/pipeline.json)",
    )
    args = parser.parse_args(argv)
    for flag in ("batches", "steps", "image_size", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup_steps < 0:
        parser.error("--warmup-steps must be >= 0")
    return args


def resolve_dataset(name: str, data: Path) -> str:
    """``folder:NAME`` with a relative NAME that is not a folder here means ``folder:<data>/NAME``."""
    if name.startswith(kdata.FOLDER_PREFIX):
        path = Path(name[len(kdata.FOLDER_PREFIX) :])
        if not path.is_absolute() and not path.is_dir():
            path = data / path
        return f"{kdata.FOLDER_PREFIX}{path}"
    return name


def bench_pipeline(name, args, data_dir, manual_dir) -> dict:
    """Examples/s of the training pipeline: first pass (decode, resize, fill cache), then warm."""
    start = time.perf_counter()
    spec = kdata.dataset_spec(name, data_dir=data_dir, manual_dir=manual_dir)  # builds a TFDS config if needed
    prepare_s = time.perf_counter() - start
    train_examples = spec.split_sizes["train"]
    dataset = kdata.load(
        name,
        "train",
        image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size,
        augmentation=args.augmentation,
        shuffle=True,
        repeat=True,
        seed=0,
        data_dir=data_dir,
        manual_dir=manual_dir,
    )
    iterator = iter(dataset)
    # One epoch's worth of batches: every training example is read, decoded, resized and cached.
    first_batches = math.ceil(train_examples / args.batch_size)
    start = time.perf_counter()
    for _ in range(first_batches):
        next(iterator)
    first_pass_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    warm_s = time.perf_counter() - start
    del iterator, dataset
    gc.collect()
    return {
        "dataset": name,
        "num_classes": spec.num_classes,
        "train_examples": train_examples,
        "prepare_s": prepare_s,
        "first_pass_s": first_pass_s,
        "first_pass_examples_per_s": first_batches * args.batch_size / first_pass_s,
        "timed_batches": args.batches,
        "pipeline_s": warm_s,
        "pipeline_examples_per_s": args.batches * args.batch_size / warm_s,
    }


def bench_step(preset, args, num_classes=1) -> dict:
    """Examples/s of ``train_on_batch`` on one fixed in-memory batch."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    size = (args.image_size, args.image_size)
    model = build_preset(preset, image_size=size, num_classes=num_classes)
    jit_compile = {"false": False, "true": True, "auto": "auto"}[args.jit_compile]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=get_loss("bce_dice", num_classes=num_classes),
        metrics=default_metrics(num_classes=num_classes),
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((args.batch_size, *size, 3), dtype=np.float32))
    y = tf.constant((rng.random((args.batch_size, *size, 1)) > 0.7).astype(np.float32))
    for _ in range(args.warmup_steps):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    elapsed = time.perf_counter() - start
    return {
        "preset": preset,
        "params": model.count_params(),
        "jit_compile": bool(model.jit_compile),
        "timed_steps": args.steps,
        "step_s": elapsed / args.steps,
        "step_examples_per_s": args.steps * args.batch_size / elapsed,
    }


class _StepTimer(keras.callbacks.Callback):
    """Wall time from the end of batch ``skip - 1`` to the end of the last batch."""

    def __init__(self, skip):
        super().__init__()
        self.skip, self.start, self.end = skip, None, None

    def on_train_begin(self, logs=None):
        if self.skip == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()
        if batch == self.skip - 1:
            self.start = self.end


def bench_fit(name, preset, args, data_dir, manual_dir, num_classes=1) -> dict:
    """Examples/s of ``model.fit`` fed by the real pipeline (pipeline threads and training share the CPU)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    size = (args.image_size, args.image_size)
    model = build_preset(preset, image_size=size, num_classes=num_classes)
    jit_compile = {"false": False, "true": True, "auto": "auto"}[args.jit_compile]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=get_loss("bce_dice", num_classes=num_classes),
        metrics=default_metrics(num_classes=num_classes),
        jit_compile=jit_compile,
    )
    dataset = kdata.load(
        name,
        "train",
        image_size=size,
        batch_size=args.batch_size,
        augmentation=args.augmentation,
        shuffle=True,
        repeat=True,
        seed=0,
        data_dir=data_dir,
        manual_dir=manual_dir,
    )
    # The first steps trace the step and fill the cache (the shuffle buffer spans the whole split).
    warmup = max(args.warmup_steps, 1)
    timer = _StepTimer(warmup)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + args.steps, callbacks=[timer], shuffle=False, verbose=0)
    elapsed = timer.end - timer.start
    return {"fit_s_per_step": elapsed / args.steps, "fit_examples_per_s": args.steps * args.batch_size / elapsed}


def main(argv=None):
    args = parse_args(argv)
    tfds.disable_progress_bar()
    data = (args.data or common.real_data_dir()).resolve()
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="kseg-bench-tfds-")) if temporary else args.data_dir.resolve()
    print(
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, augmentation {args.augmentation}; "
        f"{args.batches} timed batches per dataset, {args.steps} timed steps per preset "
        f"(after {args.warmup_steps} warm-up); TFDS data dir {data_dir}",
        flush=True,
    )
    try:
        pipelines = []
        for name in args.datasets:
            name = resolve_dataset(name, data)
            manual_dir = data / MANUAL_DIRS[name] if name in MANUAL_DIRS else None
            row = bench_pipeline(name, args, str(data_dir), str(manual_dir) if manual_dir else None)
            row["manual_dir"] = str(manual_dir) if manual_dir else None
            pipelines.append(row)
            print(
                f"  pipeline {name}: first pass {row['first_pass_examples_per_s']:.1f} ex/s, "
                f"warm {row['pipeline_examples_per_s']:.1f} ex/s",
                flush=True,
            )

        steps = []
        for preset in args.presets:  # every dataset here is binary, so one model per preset serves all
            row = bench_step(preset, args)
            print(
                f"  train step {preset}: {row['step_s']:.3f} s/step, {row['step_examples_per_s']:.1f} ex/s", flush=True
            )
            if args.end_to_end:
                first = pipelines[0]
                row.update(
                    fit_dataset=first["dataset"],
                    **bench_fit(first["dataset"], preset, args, str(data_dir), first["manual_dir"]),
                )
                print(
                    f"  fit {preset} on {first['dataset']}: {row['fit_s_per_step']:.3f} s/step, "
                    f"{row['fit_examples_per_s']:.1f} ex/s",
                    flush=True,
                )
            steps.append(row)
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)

    fit_keys = ("fit_dataset", "fit_s_per_step", "fit_examples_per_s")
    rows = [
        {
            **p,
            **{k: v for k, v in s.items() if k not in fit_keys},
            "headroom": p["pipeline_examples_per_s"] / s["step_examples_per_s"],
        }
        for p in pipelines
        for s in steps
    ]
    print()
    common.print_table(rows, COLUMNS, markdown=args.markdown)
    if args.end_to_end:
        for s in steps:
            s["fit_vs_step"] = s["fit_examples_per_s"] / s["step_examples_per_s"]
        print()
        common.print_table(
            steps,
            [
                ("preset", "preset"),
                ("fit_dataset", "fit on"),
                ("step_examples_per_s", "step ex/s (in-memory)"),
                ("fit_examples_per_s", "fit ex/s (pipeline)"),
                ("fit_vs_step", "fit/step"),
            ],
            markdown=args.markdown,
        )
    print(
        f"\nheadroom = pipeline ex/s / step ex/s (want >> 1). Measured separately: in training both share the "
        f"CPU, so on a small machine the real margin is lower.\n{common.NOISE_NOTE}"
    )
    path = common.write_results(
        args.output,
        rows,
        benchmark="pipeline",
        extra={
            "settings": {
                "image_size": [args.image_size, args.image_size],
                "batch_size": args.batch_size,
                "augmentation": args.augmentation,
                "load_kwargs": {"shuffle": True, "repeat": True, "seed": 0, "cache": True},
                "timed_batches": args.batches,
                "timed_steps": args.steps,
                "warmup_steps": args.warmup_steps,
                "optimizer": "Adam(1e-3)",
                "loss": "bce_dice",
                "metrics": "default_metrics()",
                "jit_compile": args.jit_compile,
                "tfds_data_dir": None if temporary else str(data_dir),
                "real_data_dir": str(data),
            },
            "pipeline": pipelines,
            "train_step": steps,
            "columns": {
                "prepare_s": "dataset_spec(): builds the TFDS config on first use (0 when already built)",
                "first_pass_examples_per_s": "first epoch of batches: read, decode, resize, fill the cache, augment",
                "pipeline_examples_per_s": "timed batches after the first pass (cache warm), pure iteration",
                "step_examples_per_s": "model.train_on_batch on a fixed in-memory batch, after warm-up steps",
                "headroom": "pipeline_examples_per_s / step_examples_per_s",
                "fit_examples_per_s": "--end-to-end only: model.fit fed by the real pipeline of fit_dataset, after "
                "warm-up steps; compare with step_examples_per_s",
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
