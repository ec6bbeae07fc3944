"""Masks and overlays for image files from a loaded model (the library behind ``python -m kseg.predict``).

For each input ``NAME.ext`` it writes ``NAME_mask.png`` and ``NAME_overlay.png`` (see ``kseg.core.outputs``) at
the image's original size, each file whole or not at all; output names are unique (``kseg.core.inputs``). One bad
input (unreadable, a decompression bomb, an output name taken by a user's file) is named and skipped; a full
disk stops the run (``kseg.core.outputs.DiskFullError``).
"""

from __future__ import annotations

import pathlib

from kseg.core import imageio, inputs, outputs
from kseg.prediction import inference
from kseg.tasks import postprocess


def predict_files(
    predictor: inference.Predictor,
    files,
    output_dir,
    *,
    batch_size: int = 8,
    postprocessing: postprocess.PostProcessing | None = None,
    progress=None,
) -> tuple[list, list]:
    """Write the predictor's files for each image (its task says which: a mask and an overlay, or labels,
    overlay and JSON); returns ``(written, errors)``. A file that cannot be read or written is an error line
    naming it; the others are still predicted."""
    writer = outputs.PredictionWriter(output_dir)
    errors, batch = writer.errors, []

    def flush():
        results = predictor.predict(
            [image for _, _, image in batch], batch_size=batch_size, postprocessing=postprocessing
        )
        for (path, stem, image), result in zip(batch, results):
            writer.write_files(path, stem, predictor.prediction_files(image, result, pathlib.Path(path).name))
        batch.clear()
        if progress:
            progress(len(writer.written) + len(errors))

    for path, stem in zip(files, inputs.output_stems(files)):
        try:
            batch.append((path, stem, imageio.read_image(path)))
        except imageio.ImageReadError as e:
            errors.append(str(e))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return writer.written, errors
