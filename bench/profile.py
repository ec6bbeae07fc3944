"""Profile training steps in float32 and mixed_bfloat16: which TensorFlow ops take the time in each.

The model is built and compiled as kseg's training builds it (``kseg.training.setup``: the recipe of the
training preset that uses this model preset, with its loss, metrics and optimizer; no XLA), the precision
is set directly (whatever ``kseg.core.distribute.precision_policy`` would choose on this CPU), and a
``tf.profiler`` trace of ``--steps`` training steps is recorded after ``--warmup`` untimed ones, for each
precision, in ``bench/results/profile/<preset>[-<phase>]-<precision>/`` (replaced on each run; open it with
``tensorboard --logdir bench/results/profile``, Profile tab). The script then reads the trace's
``framework_op_stats`` (TensorBoard's "TensorFlow Stats" table) and prints, for each precision side by side,
the ops with the most self time and the self time per op type, and writes them as JSON with the machine.

    .venv/bin/python bench/profile.py --preset unet-small --image-size 192x256
    .venv/bin/python bench/profile.py --preset unet-lite0 --image-size 192x256 --phase finetune --steps 5
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when run from elsewhere
import common  # noqa: E402  (puts the repository on sys.path and quiets TensorFlow before it is imported)

import kseg  # noqa: E402,F401  (sets KERAS_BACKEND before keras is imported)

# isort: split

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402

from kseg.models import MODEL_PRESETS  # noqa: E402
from kseg.training import config as kseg_config  # noqa: E402
from kseg.training import setup  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
PHASES = ("frozen", "finetune")
TRACE_ROOT = common.RESULTS_DIR / "profile"
#: Only shapes the learning-rate schedule, not the cost of a step.
STEPS_PER_EPOCH = 100


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset",
        default="unet-small",
        choices=list(MODEL_PRESETS),
        metavar="PRESET",
        help=f"model preset, one of {', '.join(MODEL_PRESETS)} (default: unet-small)",
    )
    parser.add_argument("--image-size", default="192x256", help="HxW or one side (default: 192x256, PH2's shape)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--steps", type=int, default=10, help="traced training steps (default: 10)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed, untraced steps first: tracing the function and first-call costs (default: 3)",
    )
    parser.add_argument(
        "--phase",
        choices=PHASES,
        help="presets with a pretrained encoder: train the decoder alone (frozen) or the encoder "
        "too (finetune, its batch norm frozen as in kseg's training; the default)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=list(PRECISIONS),
        choices=PRECISIONS,
        help="Keras policies to profile (default: both)",
    )
    parser.add_argument("--top", type=int, default=15, help="ops to print per precision (default: 15)")
    parser.add_argument(
        "--output", type=Path, help="JSON results (default: bench/results/profile_<preset>[-<phase>].json)"
    )
    args = parser.parse_args(argv)
    try:
        args.image_size = kseg_config.parse_image_size(args.image_size)
    except kseg_config.ConfigError as e:
        parser.error(str(e))
    for flag in ("batch_size", "steps", "top"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    has_encoder = MODEL_PRESETS[args.preset][1].get("encoder") is not None
    if args.phase and not has_encoder:
        parser.error(f"--phase: {args.preset} has no pretrained encoder (every layer trains)")
    if has_encoder:
        args.phase = args.phase or "finetune"
    args.run_name = args.preset + (f"-{args.phase}" if args.phase else "")
    args.output = args.output or common.RESULTS_DIR / f"profile_{args.run_name}.json"
    return args


def training_config(preset: str, image_size, batch_size: int) -> kseg_config.TrainConfig:
    """The recipe kseg trains this model preset with: the first training preset using it (e.g. ph2-unet-lite0
    for unet-lite0), else the default one with the model swapped."""
    recipe = next(
        (name for name, values in kseg_config.TRAINING_PRESETS.items() if values["model_preset"] == preset),
        kseg_config.DEFAULT_PRESET,
    )
    overrides = {"preset": recipe, "model_preset": preset, "image_size": image_size, "batch_size": batch_size}
    if MODEL_PRESETS[preset][1].get("encoder") is None:
        overrides["freeze_encoder_epochs"] = 0
    return kseg_config.resolve(overrides=overrides)


def build_for_training(config: kseg_config.TrainConfig, phase: str | None) -> keras.Model:
    """Build and compile as ``setup.prepare`` does (every layer trainable, optimizer slots for every phase);
    for the frozen phase freeze the encoder and compile again, as the fit loop does at a phase change."""
    model = setup.build_model(config, num_classes=1)
    setup.set_encoder_trainable(model, True)
    setup.compile_model(model, config, num_classes=1, steps_per_epoch=STEPS_PER_EPOCH)
    setup.build_optimizer_for_every_phase(model)
    if phase == "frozen":
        setup.set_encoder_trainable(model, False)
        setup.compile_model(model, config, num_classes=1, steps_per_epoch=STEPS_PER_EPOCH, optimizer=model.optimizer)
    return model


def trace_training(model: keras.Model, images, masks, warmup: int, steps: int, trace_dir: Path) -> float:
    """Seconds per training step over the traced steps (``train_on_batch`` waits for each step's result)."""
    for _ in range(warmup):
        model.train_on_batch(images, masks)
    shutil.rmtree(trace_dir, ignore_errors=True)  # one run per folder: the one read back below
    tf.profiler.experimental.start(str(trace_dir))
    try:
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, masks)
        elapsed = time.perf_counter() - start
    finally:
        tf.profiler.experimental.stop()
    return elapsed / steps


def read_op_stats(trace_dir: Path) -> list[dict]:
    """Every op of the trace in ``trace_dir`` with its type, name, occurrences and self time (us), from the
    profiler's ``framework_op_stats`` tool: a list of Google-Charts DataTables (``cols``, ``rows`` of ``c``
    cells); the first covers every op plus an ``IDLE`` row, the second the same without it."""
    paths = sorted(glob.glob(str(trace_dir / "plugins" / "profile" / "*" / "*.xplane.pb")))
    if not paths:
        raise RuntimeError(f"no *.xplane.pb under {trace_dir}: the profiler wrote no trace")
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([paths[-1]], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"profiler could not read {paths[-1]}: {data.decode(errors='replace')}")
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    ops = []
    for row in table["rows"]:
        cells = {column: (cell or {}).get("v") for column, cell in zip(columns, row["c"])}
        if cells["type"] == "IDLE":
            continue
        ops.append(
            {
                "type": cells["type"],
                "name": cells["operation"],
                "occurrences": int(cells["occurrences"]),
                "self_us": float(cells["total_self_time"]),
            }
        )
    return sorted(ops, key=lambda op: op["self_us"], reverse=True)


def summarize(ops: list[dict], steps: int, step_seconds: float, top: int) -> dict:
    """Per-step milliseconds and share of the step for the top ops and for every op type."""
    step_ms = step_seconds * 1000
    op_ms = sum(op["self_us"] for op in ops) / 1000 / steps
    top_ops = [
        {
            **op,
            "self_ms_per_step": op["self_us"] / 1000 / steps,
            "percent_of_step": 100 * op["self_us"] / 1000 / steps / step_ms,
        }
        for op in ops[:top]
    ]
    per_type = collections.defaultdict(float)
    for op in ops:
        per_type[op["type"]] += op["self_us"] / 1000 / steps
    op_types = {
        name: {"self_ms_per_step": ms, "percent_of_step": 100 * ms / step_ms}
        for name, ms in sorted(per_type.items(), key=lambda item: item[1], reverse=True)
    }
    return {"step_ms": step_ms, "op_self_ms_per_step": op_ms, "top_ops": top_ops, "op_types": op_types}


def short_name(name: str, op_type: str, width: int = 40) -> str:
    """The layer an op belongs to, from its scope name: without the parts that repeat the op type
    (``gradient_tape/.../convolution/Conv2DBackpropFilter`` -> ``.../dec4_conv1_1``), cut from the left."""
    bare_type = op_type.removeprefix("_MklNative").removeprefix("_Mkl")
    parts = [part for part in name.split("/") if part not in (bare_type, "convolution", "depthwise", "gradient_tape")]
    text = "/".join(parts) or name
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def print_side_by_side(results: list[dict], top: int) -> None:
    rows = []
    for rank in range(top):
        row = {"#": rank + 1}
        for result in results:
            ops = result["top_ops"]
            op = ops[rank] if rank < len(ops) else None
            tag = result["precision"]
            row[f"{tag} op"] = f"{op['type']} {short_name(op['name'], op['type'])}" if op else None
            row[f"{tag} ms"] = op["self_ms_per_step"] if op else None
            row[f"{tag} %"] = op["percent_of_step"] if op else None
        rows.append(row)
    columns = ["#"] + [f"{r['precision']} {part}" for r in results for part in ("op", "ms", "%")]
    print(
        "\nTop ops by self time (ms per step; % of the measured step: independent ops run at the same time "
        "on TensorFlow's inter-op threads, so the shares can add up to more than 100)"
    )
    common.print_table(rows, columns)


def print_op_types(results: list[dict], top: int) -> None:
    """Self time per op type in every precision: where bfloat16 gains and where it loses."""
    totals = collections.defaultdict(float)
    for result in results:
        for name, values in result["op_types"].items():
            totals[name] = max(totals[name], values["self_ms_per_step"])
    rows = []
    for name in sorted(totals, key=totals.get, reverse=True)[:top]:
        row = {"op type": name}
        for result in results:
            row[f"{result['precision']} ms"] = result["op_types"].get(name, {}).get("self_ms_per_step")
        if len(results) == 2 and all(row.get(f"{r['precision']} ms") for r in results):
            row["ratio"] = row[f"{results[1]['precision']} ms"] / row[f"{results[0]['precision']} ms"]
        rows.append(row)
    columns = ["op type"] + [f"{r['precision']} ms" for r in results] + (["ratio"] if len(results) == 2 else [])
    print(
        "\nSelf time per op type (ms per step)"
        + (f"; ratio {results[1]['precision']} / {results[0]['precision']}" if len(results) == 2 else "")
    )
    common.print_table(rows, columns)


def profile_precision(args, config, precision: str) -> dict:
    keras.backend.clear_session()
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = build_for_training(config, args.phase)
        rng = np.random.default_rng(0)
        images = rng.random((args.batch_size, *args.image_size, 3), dtype=np.float32)
        masks = (rng.random((args.batch_size, *args.image_size, 1)) > 0.5).astype(np.float32)
        trace_dir = TRACE_ROOT / f"{args.run_name}-{precision}"
        step_seconds = trace_training(model, images, masks, args.warmup, args.steps, trace_dir)
        ops = read_op_stats(trace_dir)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return {
        "precision": precision,
        "phase": args.phase,
        "step_s": step_seconds,
        "train_images_per_s": args.batch_size / step_seconds,
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "trace_dir": os.path.relpath(trace_dir, common.REPO_ROOT),
        **summarize(ops, args.steps, step_seconds, args.top),
    }


def main(argv=None):
    args = parse_args(argv)
    config = training_config(args.preset, args.image_size, args.batch_size)
    features = common.cpu_features()
    height, width = args.image_size
    print(
        f"{features['cpu_model']} (AMX bf16: {features['amx_bf16']}, AVX512_BF16: {features['avx512_bf16']}); "
        f"{args.preset}{f' {args.phase}' if args.phase else ''}, {height}x{width}, batch {args.batch_size}, "
        f"recipe {config.preset} ({config.optimizer}, {config.loss}, jit_compile={config.jit_compile}); "
        f"{args.steps} traced steps after {args.warmup} warm-up",
        flush=True,
    )
    results = []
    for precision in args.precisions:
        result = profile_precision(args, config, precision)
        results.append(result)
        print(
            f"{precision}: {result['step_ms']:.0f} ms per step ({result['train_images_per_s']:.2f} img/s), "
            f"op self time {result['op_self_ms_per_step']:.0f} ms per step; trace in {result['trace_dir']}",
            flush=True,
        )
    print_side_by_side(results, args.top)
    print_op_types(results, args.top)
    if len(results) == 2:
        print(
            f"\n{results[1]['precision']} step / {results[0]['precision']} step: "
            f"{results[1]['step_ms'] / results[0]['step_ms']:.2f}x"
        )
    settings = {
        "preset": args.preset,
        "phase": args.phase,
        "image_size": list(args.image_size),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "precisions": args.precisions,
        "training_recipe": config.preset,
        "optimizer": config.optimizer,
        "loss": config.loss,
        "jit_compile": config.jit_compile,
    }
    path = common.write_results(args.output, results, extra={"settings": settings}, benchmark="profile")
    print(f"wrote {os.path.relpath(path, common.REPO_ROOT)}")


if __name__ == "__main__":
    main()
