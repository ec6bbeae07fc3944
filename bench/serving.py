"""Benchmark the exported SavedModel's ``serving_default``: latency per request and images/s.

Real PH2 dermoscopic images (765x572 and similar) are sent as PNG bytes, in requests of 1 and of 8 images,
to the signature as TF Serving would call it (in-process, ``tf.saved_model.load``), and optionally through
the REST test double (``tests/serving_double.py``: JSON, base64 and HTTP in Python on top). Each export is
measured with a plain threshold and with the full post-processing (TTA, hole filling, largest component), so
the cost of doing everything in the serving graph shows.

    .venv/bin/python bench/serving.py                       # an untrained unet-small at 192x256
    .venv/bin/python bench/serving.py --model runs/ph2-unet --requests 20 --rest

The model's own cost does not depend on its weights, so the default (a freshly built, untrained unet-small at
the PH2 presets' size) measures what a trained model of that preset costs with a plain threshold. Hole filling
and largest-component selection, however, propagate until the mask stops changing, so their cost follows the
masks' shapes (roughly the largest region's diameter in model pixels): time them with a trained ``--model``.
Prints a table and writes JSON (machine, versions, command line, one row per path, post-processing and batch
size).
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
import tensorflow as tf  # noqa: E402

import kseg  # noqa: E402,F401  (selects the TensorFlow backend before keras is imported)
from kseg.core import imageio, serving_contract
from kseg.serving import saved_model_export, serving_client
from kseg.tasks import postprocess  # noqa: E402

COLUMNS = [
    ("path", "path"),
    ("postprocessing", "post-processing"),
    ("batch_size", "batch"),
    ("requests", "requests"),
    ("ms_per_request", "ms/request"),
    ("ms_per_request_p90", "p90 ms"),
    ("images_per_s", "images/s"),
    ("request_kib", "request KiB"),
]
VARIANTS = {
    "threshold": postprocess.PostProcessing(),
    "tta+holes+largest": postprocess.PostProcessing(tta=True, fill_holes=True, largest_component=True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a .keras file or run directory (default: an untrained unet-small, see --image-size)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[192, 256],
        metavar=("H", "W"),
        help="input size of the default untrained model (default: 192 256)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="images per request (default: 1 8)")
    parser.add_argument("--requests", type=int, default=8, help="timed requests per measurement (default: 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests first (default: 1)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="post-processing variants to export and time (default: all)",
    )
    parser.add_argument("--rest", action="store_true", help="also time requests through the REST test double")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="real data folder holding PH2Dataset/ (default: $KSEG_DATA_DIR or <repo>/../shared/data)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=common.RESULTS_DIR / "serving.json",
        help="JSON results file (default: bench/results/serving.json)",
    )
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.requests < 1 or args.warmup < 0 or min(args.image_size) < 16:
        parser.error("batch sizes and --requests must be >= 1, --warmup >= 0, --image-size >= 16")
    return args


def ph2_png_bytes(data: Path, count: int) -> tuple[list[bytes], list[tuple[int, int]]]:
    """``count`` real PH2 dermoscopic images as PNG bytes (what a client would send), and their sizes."""
    from PIL import Image

    folders = sorted((data / "PH2Dataset" / "PH2 Dataset images").glob("IMD*"))[:count]
    if len(folders) < count:
        sys.exit(f"need {count} PH2 images under {data / 'PH2Dataset'}; set ${common.DATA_DIR_ENV} or pass --data")
    payloads, sizes = [], []
    for folder in folders:
        image = imageio.read_image(folder / f"{folder.name}_Dermoscopic_Image" / f"{folder.name}.bmp")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
        sizes.append(image.shape[:2])
    return payloads, sizes


def default_model(directory: Path, image_size) -> Path:
    from kseg.models import build_preset

    path = directory / "untrained" / "best.keras"
    path.parent.mkdir(parents=True)
    build_preset("unet-small", image_size=tuple(image_size), num_classes=1).save(path)
    return path


def time_requests(call, batches, warmup):
    for batch in batches[:warmup]:
        call(batch)
    times = []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - start)
    return times


def row(path, variant, batch_size, times, payloads):
    mean = statistics.fmean(times)
    ordered = sorted(times)
    return {
        "path": path,
        "postprocessing": variant,
        "batch_size": batch_size,
        "requests": len(times),
        "ms_per_request": 1000 * mean,
        "ms_per_request_p90": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "images_per_s": batch_size / mean,
        "request_kib": sum(len(p) for p in payloads[:batch_size]) / 1024,
    }


def main(argv=None):
    args = parse_args(argv)
    data = (args.data or common.real_data_dir()).resolve()
    payloads, sizes = ph2_png_bytes(data, max(args.batch_sizes))
    rows = []
    with tempfile.TemporaryDirectory(prefix="kseg-bench-serving-") as tmp:
        tmp = Path(tmp)
        model = args.model or default_model(tmp, args.image_size)
        double = None
        if args.rest:
            sys.path.insert(0, str(common.REPO_ROOT / "tests"))
            import serving_double

        for variant in args.variants:
            target = saved_model_export.export_model(
                model, tmp / "models", name=variant.replace("+", "-"), postprocessing=VARIANTS[variant]
            )
            signature = tf.saved_model.load(str(target)).signatures["serving_default"]
            print(f"exported {model} with {VARIANTS[variant].describe()} -> {target}", flush=True)
            if args.rest:
                if double is not None:
                    double.stop()
                double = serving_double.ServingDouble({"kseg": target.parent}).start(grpc_server=False)
            for batch_size in args.batch_sizes:
                # Requests rotate through the images so that each call decodes different bytes.
                batches = [
                    [payloads[(i * batch_size + j) % len(payloads)] for j in range(batch_size)]
                    for i in range(args.warmup + args.requests)
                ]
                times = time_requests(lambda b, call=signature: call(image_bytes=tf.constant(b)), batches, args.warmup)
                rows.append(row("in-process", variant, batch_size, times, payloads))
                print(f"  in-process batch {batch_size}: {rows[-1]['ms_per_request']:.0f} ms/request", flush=True)
                if args.rest:
                    rest = serving_client.RestClient(double.rest_url, "kseg")
                    times = time_requests(rest.predict, batches, args.warmup)
                    rows.append(row("REST double", variant, batch_size, times, payloads))
                    print(f"  REST double batch {batch_size}: {rows[-1]['ms_per_request']:.0f} ms/request", flush=True)
        if double is not None:
            double.stop()
        metadata = json.loads((target / serving_contract.KSEG_FILE).read_text())

    print()
    common.print_table(rows, COLUMNS, markdown=args.markdown)
    print(
        f"\nPH2 images {sorted(set(sizes))[0][1]}x{sorted(set(sizes))[0][0]} to "
        f"{sorted(set(sizes))[-1][1]}x{sorted(set(sizes))[-1][0]} as PNG; model input "
        f"{metadata['image_size'][0]}x{metadata['image_size'][1]}. ms/request is the mean over the timed requests; "
        f"images/s = batch / mean. The model's time does not depend on its weights; hole filling and the "
        f"largest component iterate until the mask is stable, so theirs depends on the masks (use a trained "
        f"--model for those figures).\n{common.NOISE_NOTE}"
    )
    path = common.write_results(
        args.output,
        rows,
        benchmark="serving",
        extra={
            "settings": {
                "model": str(args.model)
                if args.model
                else f"untrained unet-small {args.image_size[0]}x{args.image_size[1]}",
                "model_image_size": metadata["image_size"],
                "batch_sizes": args.batch_sizes,
                "timed_requests": args.requests,
                "warmup_requests": args.warmup,
                "variants": {v: VARIANTS[v].to_dict() for v in args.variants},
                "images": "PH2 dermoscopic images (IMD002...) re-encoded as PNG",
                "image_sizes": [list(s) for s in sizes],
                "rest": args.rest,
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
