"""``python -m kseg.predict``: masks and overlays for image files, with the model's stored post-processing.

For each input ``NAME.ext`` it writes ``NAME_mask.png`` and ``NAME_overlay.png`` at the image's original
size (``kseg.prediction.image_files``). Files that cannot be read are reported by name and skipped; the others are still
predicted. Exit statuses: 0 every image written, 1 some failed, 2 bad flags or paths, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from kseg import tasks
from kseg.core import cli, files, inputs, settings

PROG = "kseg.predict"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.predict",
        description="Write NAME_mask.png and NAME_overlay.png for each input image, at the image's size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, BMP, ...) or folders")
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a run directory, an exported SavedModel, or pretrained:NAME (a ready-made pose model: "
        "pretrained:openpose-mobilenet-thin, pretrained:movenet-multipose)",
    )
    parser.add_argument("--output-dir", "--out", dest="output_dir", required=True, help="where the PNGs go")
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders of folder inputs")
    parser.add_argument("--batch-size", type=settings.BATCH_SIZE, default=8)
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation; default: the choice stored with the model",
    )
    parser.add_argument(
        "--threshold", type=settings.THRESHOLD, default=None, help="default: the choice stored with the model"
    )
    parser.add_argument(
        "--instances",
        metavar="MODEL",
        default=None,
        help="with a keypoint --model: an instance model too (run dir, .keras or export); also writes "
        "NAME_people.png, each person's mask and skeleton in one picture",
    )
    parser.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None)
    cli.add_verbose_flag(parser)
    return parser


def _with_instances(predictor, instances_model: str, model: str):
    """The keypoint ``predictor`` and the instance model at ``instances_model`` as one (``--instances``)."""
    from kseg.core.errors import UsageError
    from kseg.prediction import inference, people

    if predictor.task != tasks.KEYPOINTS:
        raise UsageError(f"--instances: goes with a keypoint model; {model} is a {predictor.task} model")
    masks = inference.load_predictor(instances_model)
    if masks.task != tasks.INSTANCES:
        raise UsageError(f"--instances {instances_model}: expected an instance model, got a {masks.task} model")
    return people.PeoplePredictor(predictor, masks)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    written = []

    def work():
        from kseg.prediction import image_files, inference

        files.check_output_dir(args.output_dir)
        found = inputs.collect_image_files(args.inputs, recursive=args.recursive)
        for line in found.skipped:
            print(f"{PROG}: note: {line}", file=sys.stderr)
        predictor = inference.load_predictor(args.model)
        overrides = {
            n: getattr(args, n)
            for n in ("tta", "threshold", "fill_holes", "largest_component")
            if getattr(args, n) is not None
        }
        tasks.check_postprocessing_flags(predictor.task, overrides, args.model)
        if args.instances is not None:
            predictor = _with_instances(predictor, args.instances, args.model)
        postprocessing = dataclasses.replace(predictor.postprocessing, **overrides)
        summary = tasks.get(predictor.task).describe(postprocessing)
        errors = list(found.problems)
        if found.files:
            done, read_errors = image_files.predict_files(
                predictor,
                found.files,
                args.output_dir,
                batch_size=args.batch_size,
                postprocessing=postprocessing,
                progress=cli.progress_bar(len(found.files)),
            )
            written.extend(done)
            errors += read_errors
        return cli.report_written(PROG, len(written), len(found.files), errors, args.output_dir, summary)

    return cli.run(PROG, work, interrupted=lambda: cli.outputs_kept(args.output_dir), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
