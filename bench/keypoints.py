"""Keypoints over seeds against the ready-made pose models: test PCK@0.2 (and @0.1) of ``lspet-keypoints``
runs, per joint, beside OpenPose (MobileNet-thin) and MoveNet multi-pose scored zero-shot on the same images,
and milliseconds per image through each one's exported ``serving_default``.

Train the seeds first (each a plain ``kseg.train`` run; run them in the background):

    .venv/bin/python -m kseg.train --preset lspet-keypoints --seed 0 --output-dir bench/runs/lspet-keypoints-seed0

then compare them (every model is scored by ``kseg.evaluate``'s evaluator at each image's original size;
joints are matched by name, so a COCO model is scored on the LSP joints it has: no head top, and MoveNet
has no neck either; the means over the joints all models share are in the ``common`` columns):

    .venv/bin/python bench/keypoints.py bench/runs/lspet-keypoints-seed{0,1,2}

Serving: each model is exported (``kseg.export``'s code) and its ``serving_default`` called one PNG per
request on the first ``--timing-images`` test images, as TF Serving would run it. For OpenPose the network
and the grouping are also timed apart (the grouping must cost less than the network). Prints tables and
writes JSON (machine, versions, command, one row per model and seed).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (also puts the repository on sys.path and quiets TF's C++ logging)

PRETRAINED = ("openpose-mobilenet-thin", "movenet-multipose")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished lspet-keypoints run directories (one per seed)")
    parser.add_argument(
        "--pretrained", nargs="*", default=list(PRETRAINED), help="ready-made models to score zero-shot beside them"
    )
    parser.add_argument("--dataset", default="tfds_ph2/lspet")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--timing-images", type=int, default=50, help="test images timed per model (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first (default: 3)")
    parser.add_argument("--no-serving", dest="serving", action="store_false", help="skip the serving timing")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=common.RESULTS_DIR / "keypoints_lspet.json",
        help="JSON results file (default: bench/results/keypoints_lspet.json)",
    )
    return parser.parse_args(argv)


def weighted_pck(per_joint: dict, joints, key: str = "pck") -> float:
    """PCK over ``joints`` as the evaluator pools it: each visible joint counts once."""
    hits = sum(per_joint[j][key] * per_joint[j]["visible"] for j in joints)
    return hits / max(sum(per_joint[j]["visible"] for j in joints), 1)


def score(model: str, args, output_dir: Path) -> dict:
    from kseg.evaluation import report

    summary = report.evaluate(
        model, args.dataset, args.split, output_dir, data_dir=args.data_dir, figures_too=False, group_by=None
    )
    return summary


def seed_row(run_dir: Path, args) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        sys.exit(f"bench/keypoints.py: {metrics_file} not found; train the run to its end first (see --help)")
    if config.get("task") != "keypoints":
        sys.exit(f"bench/keypoints.py: {run_dir} is a {config.get('task')} run; expected a keypoints run")
    metrics = json.loads(metrics_file.read_text())
    summary = score(str(run_dir), args, run_dir / f"evaluation-{args.split}")
    return {
        "model": f"lspet-keypoints seed {config['seed']}",
        "seed": config["seed"],
        "run_dir": str(run_dir),
        "summary": summary,
        "validation_pck": metrics["validation"]["pck"],
        "train_minutes": metrics["train_seconds"] / 60,
        "best_epoch": metrics["best_epoch"],
        "precision": metrics.get("precision"),
    }


def pretrained_row(name: str, args, scratch: Path) -> dict:
    summary = score(f"pretrained:{name}", args, scratch / name)
    return {"model": name, "summary": summary}


def png_payloads(args) -> list[bytes]:
    from PIL import Image

    from kseg import data

    payloads = []
    for example in data.load_examples(args.dataset, args.split, data_dir=args.data_dir).take(args.timing_images):
        buffer = io.BytesIO()
        Image.fromarray(example["image"].numpy()).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
    return payloads


def _timed(call, items, warmup: int) -> dict:
    for item in items[:warmup]:
        call(item)
    times = []
    for item in items:
        start = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - start)
    return {
        "images": len(times),
        "ms_mean": 1000 * statistics.fmean(times),
        "ms_median": 1000 * statistics.median(times),
    }


def serving_times(model: str, payloads, warmup: int) -> dict:
    import tensorflow as tf

    from kseg.serving import saved_model_export

    with tempfile.TemporaryDirectory(prefix="kseg-bench-keypoints-") as tmp:
        target = saved_model_export.export_model(model, Path(tmp), name="pose")
        signature = tf.saved_model.load(str(target)).signatures["serving_default"]
        return _timed(lambda payload: signature(image_bytes=tf.constant([payload])), payloads, warmup)


def openpose_parts(payloads, warmup: int) -> dict:
    """The OpenPose network and its grouping timed apart, each as one traced function, on the same images."""
    import tensorflow as tf

    from kseg.models import openpose
    from kseg.tasks import openpose_ops

    network = openpose.OpenPoseNetwork()
    images = [tf.io.decode_png(p, channels=3) for p in payloads]
    inputs = [network.preprocess(image[None]) for image in images]
    run = tf.function(network.run)
    outputs = [run(x) for x in inputs]
    group = tf.function(openpose_ops.group_people)
    sizes = [tf.shape(image)[:2][None] for image in images]
    return {
        "network": _timed(lambda i: run(inputs[i])[0].numpy(), list(range(len(inputs))), warmup),
        "grouping": _timed(lambda i: group(*outputs[i], sizes[i])["count"].numpy(), list(range(len(inputs))), warmup),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [seed_row(run, args) for run in args.runs]
    with tempfile.TemporaryDirectory(prefix="kseg-bench-pretrained-") as scratch:
        rows += [pretrained_row(name, args, Path(scratch)) for name in args.pretrained]
    if not rows:
        sys.exit("bench/keypoints.py: give run directories, pretrained models, or both")
    joints = list(rows[0]["summary"]["per_joint"])
    common_joints = [j for j in joints if all(j not in row["summary"]["joints_missing"] for row in rows)]
    for row in rows:
        summary = row["summary"]
        row["pck"], row["pck_0.1"] = summary["pck"], summary["pck_0.1"]
        row["pck_common"] = weighted_pck(summary["per_joint"], common_joints)
        row["pck_0.1_common"] = weighted_pck(summary["per_joint"], common_joints, "pck_0.1")
        row["joints_scored"] = len(joints) - len(summary["joints_missing"])

    seeds = [row for row in rows if "seed" in row]
    over_seeds = {}
    if seeds:
        for key in ("pck", "pck_0.1", "pck_common", "pck_0.1_common", "validation_pck", "train_minutes"):
            values = [row[key] for row in seeds]
            over_seeds[key] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
        over_seeds["per_joint"] = {
            j: statistics.fmean(row["summary"]["per_joint"][j]["pck"] for row in seeds) for j in joints
        }

    serving = {}
    if args.serving:
        payloads = png_payloads(args)
        models = ([str(seeds[0]["run_dir"])] if seeds else []) + [f"pretrained:{n}" for n in args.pretrained]
        for model in models:
            serving[model] = serving_times(model, payloads, args.warmup)
        if "openpose-mobilenet-thin" in args.pretrained:
            serving["openpose parts"] = openpose_parts(payloads, args.warmup)

    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    table = [
        {
            "model": row["model"],
            "joints": row["joints_scored"],
            "pck": fmt(row["pck"]),
            "pck01": fmt(row["pck_0.1"]),
            "common": fmt(row["pck_common"]),
            "common01": fmt(row["pck_0.1_common"]),
            "minutes": f"{row['train_minutes']:.1f}" if "train_minutes" in row else "-",
        }
        for row in rows
    ]
    if seeds:
        table.append(
            {
                "model": f"lspet-keypoints mean ± std ({len(seeds)} seeds)",
                **{
                    column: f"{over_seeds[key]['mean']:.3f} ± {over_seeds[key]['std']:.3f}"
                    for column, key in (("pck", "pck"), ("pck01", "pck_0.1"), ("common", "pck_common"))
                },
                "common01": fmt(over_seeds["pck_0.1_common"]["mean"]),
                "minutes": f"{over_seeds['train_minutes']['mean']:.1f}",
            }
        )
    columns = [
        ("model", "model"),
        ("joints", "joints"),
        ("pck", "PCK@0.2"),
        ("pck01", "PCK@0.1"),
        ("common", f"PCK@0.2 ({len(common_joints)} common)"),
        ("common01", "PCK@0.1 (common)"),
        ("minutes", "train min"),
    ]
    print()
    common.print_table(table, columns, markdown=args.markdown)

    per_joint_rows = []
    names = ([("lspet-keypoints (mean)", over_seeds.get("per_joint"))] if seeds else []) + [
        (row["model"], {j: row["summary"]["per_joint"][j]["pck"] for j in joints}) for row in rows if "seed" not in row
    ]
    for joint in joints:
        cells = {"joint": joint, "visible": rows[0]["summary"]["per_joint"][joint]["visible"]}
        for name, values in names:
            cells[name] = fmt(values[joint])
        if seeds and len(names) > 1:
            best = max(names, key=lambda item: -1 if item[1][joint] is None else item[1][joint])
            cells["best"] = best[0]
        per_joint_rows.append(cells)
    print()
    common.print_table(
        per_joint_rows,
        [("joint", "joint"), ("visible", "visible")]
        + [(n, n) for n, _ in names]
        + ([("best", "best")] if seeds else []),
        markdown=args.markdown,
    )
    if serving:
        print()
        for model, times in serving.items():
            if model == "openpose parts":
                print(
                    f"openpose network alone {times['network']['ms_median']:.0f} ms/image median, grouping alone "
                    f"{times['grouping']['ms_median']:.0f} ms/image median"
                )
            else:
                print(
                    f"{model}: serving_default {times['ms_median']:.0f} ms/image median ({times['ms_mean']:.0f} mean)"
                )

    for row in rows:
        row["per_joint"] = row["summary"]["per_joint"]
        del row["summary"]
    path = common.write_results(
        args.output,
        rows,
        extra={"common_joints": common_joints, "summary_over_seeds": over_seeds, "serving": serving},
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
