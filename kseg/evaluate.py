"""``python -m kseg.evaluate``: score a trained model on a dataset split the way papers do.

Each image is predicted at the model's size and scored against its ground truth at the image's original
resolution. Written to ``--output-dir``: ``cases.csv`` (one row per image), ``summary.json`` (distribution of
each score, pooled Dice, mean Dice per group, the post-processing used, with ``--ablation`` each step's Dice)
and figures. ``--choose-postprocessing`` first picks TTA, hole filling, largest component and the threshold
on the *validation* split and stores the choice next to the model (see ``kseg.evaluation``).
"""

from __future__ import annotations

import argparse
import sys

from kseg.core import cli, settings
from kseg.core.errors import UsageError

PROG = "kseg.evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.evaluate",
        description="Score a model on a dataset split at each image's original resolution; write cases.csv, "
        "summary.json and figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a run directory, an exported SavedModel, or pretrained:NAME (a ready-made pose model: "
        "pretrained:openpose-mobilenet-thin, pretrained:movenet-multipose)",
    )
    parser.add_argument("--dataset", default="tfds_ph2/ph2", help="TFDS name (tfds_ph2/ph2, ...) or folder:PATH")
    parser.add_argument(
        "--split",
        default="test",
        help="split to score; 'all' scores every image; TFDS sums such as train+validation+test",
    )
    parser.add_argument("--output-dir", required=True, help="where cases.csv, summary.json and figures go")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over flips (and 90-degree rotations for square models); default: stored choice",
    )
    parser.add_argument(
        "--threshold", type=settings.THRESHOLD, default=None, help="probability threshold; default: stored choice"
    )
    parser.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill enclosed background; default: stored choice",
    )
    parser.add_argument(
        "--largest-component",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep only the largest connected region; default: stored choice",
    )
    parser.add_argument(
        "--choose-postprocessing",
        action="store_true",
        help="choose TTA, hole filling, largest component and threshold on the validation split "
        "and store the choice next to the model (used by predict and export)",
    )
    parser.add_argument(
        "--ablation", action="store_true", help="also report the Dice of each post-processing step alone"
    )
    parser.add_argument(
        "--group-by",
        default="auto",
        metavar="FEATURE",
        help="report mean Dice per value of this dataset feature (e.g. clinical_diagnosis); "
        "'auto': the one the dataset declares, if any; 'none': no grouping",
    )
    parser.add_argument("--batch-size", type=settings.BATCH_SIZE, default=8)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--manual-dir", default=None, help="manual download folder (builds the TFDS config)")
    parser.add_argument(
        "--num-classes", type=settings.NUM_CLASSES, default=None, help="folder datasets: number of classes"
    )
    cli.add_verbose_flag(parser)
    return parser


def _progress(label: str, total: int | None):
    """A bar on a terminal; otherwise one line saying what is being predicted."""
    bar = cli.progress_bar(total or 0)
    if bar is None:
        print(f"{PROG}: predicting {label}" + (f" ({total} images)" if total else ""), file=sys.stderr)
    return bar


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        try:
            settings.check_num_classes_applies(args.num_classes, args.dataset)
        except settings.SettingError as e:
            raise UsageError(f"--num-classes: {e}") from None
        from kseg import data
        from kseg.evaluation import report
        from kseg.tasks.postprocess import PostProcessing

        overrides = {
            name: getattr(args, name)
            for name in ("tta", "threshold", "fill_holes", "largest_component")
            if getattr(args, name) is not None
        }
        group_by = None if args.group_by == "none" else args.group_by
        with data.reraise_read_errors():
            summary = report.evaluate(
                args.model,
                args.dataset,
                args.split,
                args.output_dir,
                postprocessing_overrides=overrides,
                choose=args.choose_postprocessing,
                run_ablation=args.ablation,
                data_dir=args.data_dir,
                manual_dir=args.manual_dir,
                num_classes=args.num_classes,
                batch_size=args.batch_size,
                group_by=group_by,
                progress=_progress,
            )
        if summary.get("task") in ("instances", "keypoints"):
            from kseg.evaluation import instance_report, keypoint_report

            task_report = instance_report if summary["task"] == "instances" else keypoint_report
            print("\n" + task_report.format_table(summary))
        else:
            postprocessing = PostProcessing.from_dict(summary["postprocessing"])
            print("\n" + report.format_table(summary, postprocessing, summary.get("group_by")))
        print(f"{PROG}: wrote {args.output_dir}/summary.json, cases.csv and figures", file=sys.stderr)

    return cli.run(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
