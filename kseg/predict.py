"""``python -m kseg.predict``: masks and overlays for image files, with the model's stored post-processing.

For each input ``NAME.ext`` it writes ``NAME_mask.png`` and ``NAME_overlay.png`` (see ``kseg.outputs``) at the
image's original size. Files that cannot be read are reported by name and skipped; the others are still
predicted, and the exit status is 1 if any failed. Inputs may be files or folders (their images, not
recursive); names that repeat across folders get the folder name prefixed so nothing is overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from kseg import imageio, inference, outputs, postprocess


def predict_files(predictor: inference.Predictor, files, output_dir, *, batch_size: int = 8,
                  postprocessing: postprocess.PostProcessing | None = None, progress=None) -> tuple[list, list]:
    """Write mask and overlay PNGs for each file; returns ``(written, errors)``."""
    written, errors, batch = [], [], []

    def flush():
        masks = predictor.predict([image for _, _, image in batch], batch_size=batch_size,
                                  postprocessing=postprocessing)
        for (path, stem, image), mask in zip(batch, masks):
            written.append(outputs.write_prediction(output_dir, stem, image, mask, binary=predictor.num_classes == 1))
        batch.clear()
        if progress:
            progress(len(written) + len(errors))

    for path, stem in zip(files, imageio.output_stems(files)):
        try:
            batch.append((path, stem, imageio.read_image(path)))
        except imageio.ImageReadError as e:
            errors.append(str(e))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return written, errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.predict",
        description="Write NAME_mask.png and NAME_overlay.png for each input image, at the image's size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, BMP, ...) or folders")
    parser.add_argument("--model", required=True, help="a .keras file, a run directory or an exported SavedModel")
    parser.add_argument("--output-dir", required=True, help="where the PNGs go")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation; default: the choice stored with the model")
    parser.add_argument("--threshold", type=float, default=None, help="default: the choice stored with the model")
    parser.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("kseg.predict: error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    files, errors = imageio.expand_inputs(args.inputs)
    try:
        predictor = inference.load_predictor(args.model)
        overrides = {n: getattr(args, n) for n in ("tta", "threshold", "fill_holes", "largest_component")
                     if getattr(args, n) is not None}
        postprocessing = dataclasses.replace(predictor.postprocessing, **overrides)
    except (inference.ModelLoadError, postprocess.PostProcessingError) as e:
        print(f"kseg.predict: error: {e}", file=sys.stderr)
        return 2
    written = []
    if files:
        import keras

        bar = keras.utils.Progbar(len(files), unit_name="image")
        written, read_errors = predict_files(predictor, files, args.output_dir, batch_size=args.batch_size,
                                             postprocessing=postprocessing, progress=bar.update)
        errors += read_errors
    for error in errors:
        print(f"kseg.predict: skipped {error}", file=sys.stderr)
    print(f"kseg.predict: {len(written)} of {len(files)} images written to {args.output_dir} "
          f"({postprocessing.describe()}); {len(errors)} problem(s)", file=sys.stderr)
    return 1 if errors or not written else 0


if __name__ == "__main__":
    sys.exit(main())
