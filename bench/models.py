"""Benchmark the model presets: size, analytic cost and measured CPU throughput.

Parameters and MACs say what a preset costs in principle; images/s says what it costs on this machine, with
Keras' own predict/train step (the path kseg's training uses), so the numbers carry over to real runs.

    .venv/bin/python bench/models.py --steps 5
    .venv/bin/python bench/models.py --presets unet-small segnet-small --mixed-precision

Prints a table and writes JSON (machine, versions, command line, timestamp, one row per preset and policy).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

# Runnable as a plain script from a checkout: make the repository's kseg importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kseg  # noqa: E402  (sets KERAS_BACKEND and quiets TF before keras is imported)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kseg.models import MODEL_PRESETS, build_preset, count_macs, count_params  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(MODEL_PRESETS), choices=list(MODEL_PRESETS), metavar="PRESET",
                        help=f"presets to run (default: all of {', '.join(MODEL_PRESETS)})")
    parser.add_argument("--image-size", type=int, default=256, help="square input size (default: 256)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first, to exclude tracing/XLA compilation (default: 2)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="also measure under the mixed_bfloat16 policy")
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto",
                        help="Keras compile(jit_compile=...); 'auto' is Keras' default, XLA on TF (default: auto)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "models.json",
                        help="JSON results file (default: bench/results/models.json)")
    args = parser.parse_args(argv)
    for flag in ("image_size", "batch_size", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def machine_info():
    """Enough to tell whether two result files are comparable."""
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        # Cores this process may use: containers often allow fewer than os.cpu_count() reports.
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")],
    }


def versions():
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "kseg": kseg.__version__,
    }


def images_per_second(step, batch_size, warmup, steps):
    """Throughput of ``step()`` after ``warmup`` untimed calls (tracing and compilation are one-off costs)."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return steps * batch_size / elapsed, elapsed / steps


def bench_preset(preset, policy, args):
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        size = (args.image_size, args.image_size)
        model = build_preset(preset, image_size=size, num_classes=1)
        jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        rng = np.random.default_rng(0)
        x = rng.random((args.batch_size, *size, 3), dtype=np.float32)
        y = (rng.random((args.batch_size, *size, 1)) > 0.5).astype(np.float32)

        forward_ips, forward_s = images_per_second(
            lambda: model.predict_on_batch(x), args.batch_size, args.warmup, args.steps
        )
        train_ips, train_s = images_per_second(
            lambda: model.train_on_batch(x, y), args.batch_size, args.warmup, args.steps
        )
        macs = count_macs(model)
        return {
            "preset": preset,
            "policy": policy,
            "model": MODEL_PRESETS[preset][0],
            "kwargs": MODEL_PRESETS[preset][1],
            "params": count_params(model),
            "macs_per_image": macs,
            "gmacs_per_image": macs / 1e9,
            "forward_images_per_s": forward_ips,
            "forward_s_per_batch": forward_s,
            "train_images_per_s": train_ips,
            "train_s_per_batch": train_s,
            "jit_compile": bool(model.jit_compile),
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


def print_row(row, widths):
    cells = [
        row["preset"],
        row["policy"],
        f"{row['params'] / 1e6:.2f}M",
        f"{row['gmacs_per_image']:.2f}",
        f"{row['forward_images_per_s']:.2f}",
        f"{row['train_images_per_s']:.2f}",
    ]
    print("  ".join(cell.rjust(width) for cell, width in zip(cells, widths)), flush=True)


def main(argv=None):
    args = parse_args(argv)
    policies = ["float32"] + (["mixed_bfloat16"] if args.mixed_precision else [])
    header = ["preset", "policy", "params", "GMACs/img", "fwd img/s", "train img/s"]
    widths = [max(len(h), 14) if i < 2 else max(len(h), 9) for i, h in enumerate(header)]
    print(f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} timed steps "
          f"after {args.warmup} warm-up, Adam + BCE from logits, jit_compile={args.jit_compile}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))

    rows = []
    for policy in policies:
        for preset in args.presets:
            row = bench_preset(preset, policy, args)
            rows.append(row)
            print_row(row, widths)

    result = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "image_size": [args.image_size, args.image_size],
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "policies": policies,
            "jit_compile": args.jit_compile,
            "optimizer": "Adam(1e-3)",
            "loss": "BinaryCrossentropy(from_logits=True)",
            "num_classes": 1,
        },
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
