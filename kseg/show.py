"""``python -m kseg.show DATASET``: a PNG grid of a dataset's images with their masks outlined.

The quickest check that a build or a folder dataset is what you think it is.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from kseg.core import cli, files, outputs, settings
from kseg.core.errors import UsageError

PROG = "kseg.show"
#: Examples in one grid: 4 to a row, so 100 make a PNG 25 rows tall; matplotlib cannot draw ten times that.
MAX_COUNT = 100
COUNT = settings.int_in(1, MAX_COUNT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kseg.show", description=__doc__.splitlines()[0])
    parser.add_argument(
        "dataset",
        help="tfds_ph2/ph2, tfds_ph2/mads, tfds_ph2/synthetic, tfds_ph2/pennfudan, folder:PATH or coco:FILE.json",
    )
    parser.add_argument("--split", default="train", help="train, validation, test or all")
    parser.add_argument(
        "-n", "--count", type=COUNT, default=8, help=f"number of examples, 1 to {MAX_COUNT} (default 8)"
    )
    parser.add_argument("--out", default="samples.png", help="PNG file to write (.png is added if missing)")
    parser.add_argument("--data-dir", help="TFDS data dir")
    parser.add_argument("--manual-dir", help="manual download folder, to build a TFDS config on first use")
    parser.add_argument(
        "--num-classes", type=settings.NUM_CLASSES, help="folder datasets with multi-class masks: number of classes"
    )
    parser.add_argument(
        "--save-images",
        metavar="DIR",
        help="also write the examples' images as IMAGE_ID.png (inputs for kseg.predict / kseg.client)",
    )
    cli.add_verbose_flag(parser)
    return parser


def output_file(name: str) -> pathlib.Path:
    """``--out`` as the PNG file to write (``.png`` added if missing); a folder is refused rather than
    written next to as ``FOLDER.png``."""
    out = pathlib.Path(name)
    if not out.is_dir() and out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    if out.is_dir():
        raise UsageError(f"--out {out} is an existing folder; expected a PNG file name, e.g. {out / 'samples.png'}")
    return out


def image_paths(examples, folder: pathlib.Path) -> list[pathlib.Path]:
    """``IMAGE_ID.png`` per example, as a plain file name (``outputs.safe_stem``) and distinct (``_2``, ``_3``
    for ids that map to the same name)."""
    paths, taken = [], set()
    for ex in examples:
        stem = outputs.safe_stem(ex["image_id"].decode())
        name, count = stem, 1
        while name in taken:
            count += 1
            name = f"{stem}_{count}"
        taken.add(name)
        paths.append(folder / f"{name}.png")
    return paths


def save_images(examples, paths, dataset: str) -> None:
    """The examples' images, marked as kseg's input images (``kseg.core.outputs.INPUT_MARKER``): a later run may
    replace them and ``kseg.predict`` reads them."""
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for ex, path in zip(examples, paths):
        what = f"kseg.show image {ex['image_id'].decode()} of {dataset}"
        files.atomic_write_bytes(path, outputs.encode_png(ex["image"], what, marker=outputs.INPUT_MARKER))
    print(f"wrote {len(examples)} images to {paths[0].parent}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        from kseg import data
        from kseg.evaluation import plots

        try:
            settings.check_num_classes_applies(args.num_classes, args.dataset)
        except settings.SettingError as e:
            raise UsageError(f"--num-classes: {e}") from None
        out = output_file(args.out)
        inputs = data.input_folders(args.dataset, args.data_dir, args.manual_dir)
        files.check_output_dir(out.parent, "--out")
        files.check_outside_inputs(out.parent, inputs, "--out")
        outputs.check_replaceable(out)
        if args.save_images:
            files.check_output_dir(args.save_images, "--save-images")
            files.check_outside_inputs(args.save_images, inputs, "--save-images")
        with data.reraise_read_errors():
            examples = list(
                data.load_examples(
                    args.dataset,
                    args.split,
                    data_dir=args.data_dir,
                    manual_dir=args.manual_dir,
                    num_classes=args.num_classes,
                )
                .take(args.count)
                .as_numpy_iterator()
            )
        if not examples:
            raise UsageError(f"{args.dataset} split {args.split!r} holds no examples")
        paths = image_paths(examples, pathlib.Path(args.save_images)) if args.save_images else []
        for path in paths:  # every name checked before anything is written
            outputs.check_replaceable(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        titles = [f"{ex['image_id'].decode()} {ex['image'].shape[1]}x{ex['image'].shape[0]}" for ex in examples]
        spec = data.dataset_spec(args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir)
        images, name = [ex["image"] for ex in examples], f"{args.dataset} [{args.split}]"
        if spec.is_keypoints:
            points = [ex["keypoints"] for ex in examples]
            plots.keypoints_grid(out, images, points, spec.class_names, titles, name)
        else:
            masks = [ex["mask"] for ex in examples]
            plots.examples_grid(out, images, masks, spec.is_instances, titles, name)
        print(f"wrote {out} ({len(examples)} examples of {args.dataset} {args.split})")
        if paths:
            save_images(examples, paths, args.dataset)

    return cli.run(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
