"""``python -m kseg.export``: write a trained model as a TensorFlow Serving SavedModel version.

    python -m kseg.export --model runs/ph2-unet                    # -> export/models/kseg/1/ (then 2, 3, ...)
    python -m kseg.export --model runs/ph2-unet/best.keras --name lesions --version 7

What the export holds and how it is written: ``kseg.serving.saved_model_export``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from kseg.core import cli
from kseg.core.serving_contract import KSEG_FILE
from kseg.serving.saved_model_export import (
    DEFAULT_EXPORT_DIR,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_NAME,
    MAX_MEGAPIXELS,
    VERSION,
    export_model,
)

PROG = "kseg.export"


# ------------------------------------------------------------------------------------ command line ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.export",
        description="Export a trained kseg model as a TensorFlow Serving SavedModel (EXPORT_DIR/NAME/VERSION).",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a training run directory (its best.keras), or pretrained:NAME (a ready-made pose "
        "model: pretrained:openpose-mobilenet-thin, pretrained:movenet-multipose)",
    )
    parser.add_argument(
        "--export-dir",
        type=pathlib.Path,
        default=DEFAULT_EXPORT_DIR,
        help=f"folder of served models (default: {DEFAULT_EXPORT_DIR})",
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"model name in TF Serving: the folder under --export-dir and the name in "
        f"/v1/models/NAME (default: {DEFAULT_NAME}, as in export/models.config)",
    )
    parser.add_argument(
        "--version",
        type=VERSION,
        help=f"version number, {VERSION.expected} (default: one more than the highest existing version, or 1)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=MAX_MEGAPIXELS,
        default=DEFAULT_MAX_MEGAPIXELS,
        help=f"refuse larger images with INVALID_ARGUMENT; {MAX_MEGAPIXELS.expected} "
        f"(default: {DEFAULT_MAX_MEGAPIXELS:g})",
    )
    parser.add_argument("--output-dir", dest="export_dir", type=pathlib.Path, help=argparse.SUPPRESS)
    cli.add_verbose_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        from kseg import tasks
        from kseg.tasks.postprocess import PostProcessing

        target = export_model(args.model, args.export_dir, args.name, args.version, max_megapixels=args.max_megapixels)
        metadata = json.loads((target / KSEG_FILE).read_text())
        postprocessing = PostProcessing.from_dict(metadata["postprocessing"])
        signatures = ", ".join(
            f"{name} ({', '.join(spec['inputs'])} -> {', '.join(spec['outputs'])})"
            for name, spec in metadata["signatures"].items()
        )
        described = tasks.get(metadata["task"]).describe(postprocessing)
        in_graph = {
            "instances": f"grouping in the graph ({described}), at most {metadata.get('max_instances')} people "
            f"per image",
            "keypoints": f"decoding in the graph ({described}), at most {metadata.get('max_people')} people per image",
        }.get(metadata["task"], f"post-processing in the graph: {described}")
        print(
            f"exported {args.model} ({metadata['task']}) to {target}\n"
            f"  signatures: {signatures}\n"
            f"  model input {metadata['image_size'][0]}x{metadata['image_size'][1]}, "
            f"{metadata['num_classes']} output channel(s); {in_graph}\n"
            f"  serve it: see export/README.md (model base path {target.parent.resolve()})"
        )

    return cli.run(PROG, work, interrupted=lambda: "no version was written (the partial export was removed)")


if __name__ == "__main__":
    sys.exit(main())
