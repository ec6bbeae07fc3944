"""``python -m kseg.client``: masks and overlays from a model served by TensorFlow Serving.

    python -m kseg.client --server http://localhost:8501 --model ph2-unet images/ photo.jpg --out masks/
    python -m kseg.client --grpc localhost:8500 --model ph2-unet images/ --out masks/
    python -m kseg.client --saved-model export/models/kseg images/ --out masks/   # no server: same graph

Writes ``NAME_mask.png`` and ``NAME_overlay.png`` per image, as ``kseg.predict`` does (see
``kseg.serving.serving_client`` for what is sent and how). Exit statuses: 0 every image written, 1 some images
failed (each named), 2 bad flags or paths or a server that cannot be used as asked, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from kseg.core import cli, files, inputs, settings
from kseg.core.serving_contract import MAX_VERSION
from kseg.serving.serving_client import DEFAULT_SIGNATURE, check_server_address, make_client, send_files

PROG = "kseg.client"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.client",
        description="Masks and overlays (NAME_mask.png, NAME_overlay.png) from a kseg model served by TensorFlow "
        "Serving, over REST (--server) or gRPC (--grpc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, BMP, ...) or folders")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="REST address, e.g. http://localhost:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", help="gRPC address, e.g. localhost:8500")
    where.add_argument(
        "--saved-model",
        metavar="PATH",
        help="no server: run an export's signature in this process (export/models/NAME[/VERSION])",
    )
    parser.add_argument("--model", help="model name in the server's config (with --server or --grpc)")
    parser.add_argument(
        "--version", type=settings.int_in(0, MAX_VERSION), help="model version (default: the server's latest)"
    )
    parser.add_argument("--signature", default=DEFAULT_SIGNATURE, help="signature to call")
    parser.add_argument("--output-dir", "--out", dest="out", required=True, help="where the PNGs go")
    parser.add_argument("--batch-size", type=settings.BATCH_SIZE, default=8, help="images per request")
    parser.add_argument(
        "--format",
        choices=("row", "columnar"),
        default="row",
        help="REST request format: row ('instances') or columnar ('inputs')",
    )
    parser.add_argument(
        "--timeout",
        type=settings.float_in(0, 3600, low_open=True),
        default=120.0,
        help="seconds to wait for each answer",
    )
    parser.add_argument("--recursive", action="store_true", help="also read images in subfolders of folder inputs")
    parser.add_argument(
        "--reencode",
        action="store_true",
        help="send every image as PNG decoded here (exactly kseg.predict's pixels, bigger requests)",
    )
    cli.add_verbose_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    written = []

    def work():
        if args.server:
            check_server_address(args.server)
        files.check_output_dir(args.out)
        found = inputs.collect_image_files(args.inputs, recursive=args.recursive)
        for line in found.skipped:
            print(f"{PROG}: note: {line}", file=sys.stderr)
        errors = list(found.problems)
        client = make_client(args)
        try:
            if found.files:
                done, send_errors = send_files(
                    client,
                    found.files,
                    args.out,
                    args.batch_size,
                    args.reencode,
                    log=lambda line: print(line, flush=True),
                )
                written.extend(done)
                errors += send_errors
        finally:
            if hasattr(client, "close"):
                client.close()
        return cli.report_written(PROG, len(written), len(found.files), errors, args.out)

    return cli.run(PROG, work, interrupted=lambda: cli.outputs_kept(args.out), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
