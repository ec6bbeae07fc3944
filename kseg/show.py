"""``python -m kseg.show DATASET``: a PNG grid of a dataset's images with their masks outlined.

The quickest check that a build or a folder dataset is what you think it is.
"""

from __future__ import annotations

import argparse
import sys

from kseg import data, plots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kseg.show", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="tfds_ph2/ph2, tfds_ph2/mads, tfds_ph2/synthetic or folder:PATH")
    parser.add_argument("--split", default="train")
    parser.add_argument("-n", "--count", type=int, default=8, help="number of examples (default 8)")
    parser.add_argument("--out", default="samples.png", help="PNG file to write")
    parser.add_argument("--data-dir", help="TFDS data dir")
    parser.add_argument("--manual-dir", help="manual download folder, to build a TFDS config on first use")
    parser.add_argument("--save-images", metavar="DIR",
                        help="also write the examples' images as IMAGE_ID.png (inputs for kseg.predict / kseg.client)")
    args = parser.parse_args(argv)
    try:
        examples = list(data.load_examples(args.dataset, args.split, data_dir=args.data_dir,
                                           manual_dir=args.manual_dir).take(args.count).as_numpy_iterator())
    except (ValueError, FileNotFoundError, data.DatasetNotReadyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plots.contour_grid(
        args.out,
        [ex["image"] for ex in examples],
        true_masks=[ex["mask"] for ex in examples],
        titles=[f"{ex['image_id'].decode()} {ex['image'].shape[1]}x{ex['image'].shape[0]}" for ex in examples],
        title=f"{args.dataset} [{args.split}]: masks outlined in green",
    )
    print(f"wrote {args.out} ({len(examples)} examples of {args.dataset} {args.split})")
    if args.save_images:
        import pathlib

        from PIL import Image

        folder = pathlib.Path(args.save_images)
        folder.mkdir(parents=True, exist_ok=True)
        for ex in examples:
            Image.fromarray(ex["image"]).save(folder / f"{ex['image_id'].decode()}.png")
        print(f"wrote {len(examples)} images to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
