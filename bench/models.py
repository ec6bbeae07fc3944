"""Benchmark the model presets: size, analytic cost and measured CPU throughput.

Parameters and MACs say what a preset costs in principle; images/s says what it costs on this machine, with
Keras' own predict/train step (the path kseg's training uses), so the numbers carry over to real runs.
Presets with a pretrained encoder are trained in both phases of fine-tuning: ``frozen`` (the decoder alone)
and ``finetune`` (the encoder too, its batch norm frozen), as kseg's training does. ``--mixed-precision``
adds the mixed policy of this device: mixed_float16 on a GPU, mixed_bfloat16 on a CPU (forced, whatever
``kseg.core.distribute.precision_policy`` would choose there), so the two precisions can be compared on any
machine; the JSON names the GPUs and says whether the CPU has AMX and AVX512_BF16.

    .venv/bin/python bench/models.py --steps 5
    .venv/bin/python bench/models.py --presets unet-small unet-lite0 --image-size 192x256 --mixed-precision

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

# Runnable as a plain script from a checkout: make the repository's kseg and bench/common.py importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kseg  # noqa: E402  (sets KERAS_BACKEND and quiets TF before keras is imported)

# isort: split
import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kseg.core.distribute import precision_policy  # noqa: E402
from kseg.models import MODEL_PRESETS, build_preset, count_macs, count_params  # noqa: E402
from kseg.training.config import ConfigError, parse_image_size  # noqa: E402
from kseg.training.setup import set_encoder_trainable  # noqa: E402

PHASES = ("frozen", "finetune")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(MODEL_PRESETS),
        choices=list(MODEL_PRESETS),
        metavar="PRESET",
        help=f"presets to run (default: all of {', '.join(MODEL_PRESETS)})",
    )
    parser.add_argument(
        "--image-size",
        default="256",
        help="input size, 256 or HxW like 192x256; pretrained encoders need multiples of 32 (default: 256)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first, to exclude tracing/XLA compilation (default: 2)"
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="also measure under this device's mixed policy: mixed_float16 on a GPU, mixed_bfloat16 on a CPU",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        default=list(PHASES),
        choices=PHASES,
        help="for presets with a pretrained encoder: train it frozen, fine-tuned or both (default: both)",
    )
    parser.add_argument(
        "--jit-compile",
        choices=["auto", "true", "false"],
        default="auto",
        help="Keras compile(jit_compile=...); 'auto' is Keras' default, XLA on TF (default: auto)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "models.json",
        help="JSON results file (default: bench/results/models.json)",
    )
    args = parser.parse_args(argv)
    try:
        args.image_size = parse_image_size(args.image_size)
    except ConfigError as e:
        parser.error(str(e))
    for flag in ("batch_size", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if min(args.image_size) < 16:
        parser.error("--image-size must be at least 16")
    encoder_presets = [p for p in args.presets if has_pretrained_encoder(p)]
    odd_size = any(side % 32 for side in args.image_size)
    if encoder_presets and odd_size:
        parser.error(f"--image-size: {', '.join(encoder_presets)} need sides that are multiples of 32")
    return args


def has_pretrained_encoder(preset):
    return MODEL_PRESETS[preset][1].get("encoder") is not None


def machine_info():
    """Enough to tell whether two result files are comparable."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        # Cores this process may use: containers often allow fewer than os.cpu_count() reports.
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpus": common.gpu_names(),
        **common.cpu_features(),  # CPU model, AMX, AVX512_BF16, and the policy --mixed-precision gets here
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


def bench_preset(preset, policy, args, phase=None, forward=None):
    """One row. ``phase`` (``frozen``/``finetune``) for presets with a pretrained encoder, else None (every
    layer trains); ``forward``: the ``(images/s, s/batch)`` already measured for another phase (the forward
    pass does not depend on what trains), else measured here."""
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        size = tuple(args.image_size)
        model = build_preset(preset, image_size=size, num_classes=1)
        if phase is not None:
            set_encoder_trainable(model, phase == "finetune")
        jit_compile = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        rng = np.random.default_rng(0)
        x = rng.random((args.batch_size, *size, 3), dtype=np.float32)
        y = (rng.random((args.batch_size, *size, 1)) > 0.5).astype(np.float32)

        forward_ips, forward_s = forward or images_per_second(
            lambda: model.predict_on_batch(x), args.batch_size, args.warmup, args.steps
        )
        train_ips, train_s = images_per_second(
            lambda: model.train_on_batch(x, y), args.batch_size, args.warmup, args.steps
        )
        macs = count_macs(model)
        return {
            "preset": preset,
            "policy": policy,
            "phase": phase,
            "model": MODEL_PRESETS[preset][0],
            "kwargs": MODEL_PRESETS[preset][1],
            "params": count_params(model),
            "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
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
        row["phase"] or "-",
        row["policy"],
        f"{row['params'] / 1e6:.2f}M",
        f"{row['gmacs_per_image']:.2f}",
        f"{row['forward_images_per_s']:.2f}",
        f"{row['train_images_per_s']:.2f}",
    ]
    print("  ".join(cell.rjust(width) for cell, width in zip(cells, widths)), flush=True)


def measured_policies(mixed_precision: bool, device: str | None = None) -> list[str]:
    """``float32``, then with ``mixed_precision`` the policy kseg's ``--mixed-precision`` trains with on
    ``device`` (default: this machine's), bfloat16 forced on CPUs whose policy would keep float32."""
    policies = ["float32"]
    if mixed_precision:
        policies.append(precision_policy(True, device=device, cpu_bfloat16=True))
    return policies


def print_speedups(rows):
    """The mixed policy against float32 for each preset and phase measured in both."""
    float32 = {(r["preset"], r["phase"]): r for r in rows if r["policy"] == "float32"}
    pairs = [
        (float32[(r["preset"], r["phase"])], r)
        for r in rows
        if r["policy"] != "float32" and (r["preset"], r["phase"]) in float32
    ]
    if not pairs:
        return
    mixed = pairs[0][1]["policy"].removeprefix("mixed_")
    print(f"\n{mixed} / float32 (above 1: {mixed} is faster)")
    for fp32, reduced in pairs:
        train = reduced["train_images_per_s"] / fp32["train_images_per_s"]
        forward = reduced["forward_images_per_s"] / fp32["forward_images_per_s"]
        label = f"{fp32['preset']} {fp32['phase'] or ''}".strip()
        print(f"  {label:<24} train {train:.2f}x, forward {forward:.2f}x")


def main(argv=None):
    args = parse_args(argv)
    policies = measured_policies(args.mixed_precision)
    header = ["preset", "phase", "policy", "params", "GMACs/img", "fwd img/s", "train img/s"]
    widths = [max(len(h), 14) if i in (0, 2) else max(len(h), 9) for i, h in enumerate(header)]
    machine = machine_info()
    height, width = args.image_size
    gpus = f"GPU: {', '.join(machine['gpus'])}; " if machine["gpus"] else ""
    print(
        f"{gpus}{machine['cpu_model']} (AMX bf16: {machine['amx_bf16']}, AVX512_BF16: {machine['avx512_bf16']}); "
        f"{height}x{width}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"Adam + BCE from logits, jit_compile={args.jit_compile}"
    )
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))

    # Precisions alternate within each preset and phase, so that the two figures compared were measured
    # close together in time (on a shared machine the load changes from minute to minute).
    rows = []
    for preset in args.presets:
        forward = {}
        for phase in args.phases if has_pretrained_encoder(preset) else [None]:
            for policy in policies:
                row = bench_preset(preset, policy, args, phase=phase, forward=forward.get(policy))
                forward[policy] = (row["forward_images_per_s"], row["forward_s_per_batch"])
                rows.append(row)
                print_row(row, widths)
    print_speedups(rows)

    result = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine,
        "versions": versions(),
        "settings": {
            "image_size": list(args.image_size),
            "phases": args.phases,
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
