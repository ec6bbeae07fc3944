"""Benchmark building the tfds_ph2 configs from scratch, as a user would with the ``tfds`` command line.

Each config is built by ``tfds build tfds_ph2 --config NAME [--manual_dir DIR] --data_dir TMP`` in its own
process (run from the repository root, into a fresh temporary data dir), so the peak memory reported is that
build's alone. Reports examples, wall time, examples/s, the peak resident memory of the build process and
the size of the files written.

    .venv/bin/python bench/build_dataset.py
    .venv/bin/python bench/build_dataset.py --configs synthetic ph2 --markdown

Real data: ``$KSEG_DATA_DIR`` or ``<repo>/../shared/data`` (``PH2Dataset/`` for ph2, ``bodies/`` for mads).
Timings on a small shared CPU are noisy; compare runs from the same machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CONFIGS = ("synthetic", "ph2", "mads")
MANUAL_DIRS = {"ph2": "PH2Dataset", "mads": "bodies"}  # sub-folders of the real data dir
COLUMNS = [
    ("config", "config"),
    ("examples", "examples"),
    ("wall_s", "wall s"),
    ("examples_per_s", "examples/s"),
    ("peak_rss_mib", "peak RSS MiB"),
    ("size_mib", "size MiB"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=CONFIGS,
        metavar="CONFIG",
        help=f"configs to build (default: {' '.join(CONFIGS)})",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="real data folder holding PH2Dataset/ and bodies/ (default: $KSEG_DATA_DIR or <repo>/../shared/data)",
    )
    parser.add_argument(
        "--tmp-root",
        type=Path,
        default=None,
        help="where the temporary TFDS data dirs go (default: the system temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the built data dirs (their paths are printed)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=common.RESULTS_DIR / "build_dataset.json",
        help="JSON results file (default: bench/results/build_dataset.json)",
    )
    return parser.parse_args(argv)


def tfds_cli() -> str:
    """The ``tfds`` command installed next to this Python (the venv's), else whatever is on PATH."""
    candidate = Path(sys.executable).parent / "tfds"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("tfds")
    if not found:
        sys.exit("no `tfds` command found next to this Python or on PATH; install tensorflow-datasets")
    return found


def run_measured(command, log_path: Path):
    """Run ``command`` from the repository root; return ``(returncode, wall seconds, peak RSS MiB)``.

    ``os.wait4`` gives the resource usage of this one child, so earlier builds do not leak into its peak.
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=common.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, wall, usage.ru_maxrss / 1024  # Linux reports KiB


def built_dir(data_dir: Path, config: str) -> Path:
    versions = sorted((data_dir / "tfds_ph2" / config).glob("*/dataset_info.json"))
    if not versions:
        raise FileNotFoundError(f"no dataset_info.json under {data_dir / 'tfds_ph2' / config}")
    return versions[-1].parent


def count_examples(dataset_dir: Path) -> dict:
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    return {split["name"]: sum(int(n) for n in split.get("shardLengths", [])) for split in info.get("splits", [])}


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def bench_config(config: str, data: Path, tmp_root, keep: bool) -> dict:
    command = [tfds_cli(), "build", "tfds_ph2", "--config", config]
    manual_dir = None
    if config in MANUAL_DIRS:
        manual_dir = data / MANUAL_DIRS[config]
        if not manual_dir.is_dir():
            sys.exit(f"{config}: manual dir {manual_dir} not found; set ${common.DATA_DIR_ENV} or pass --data")
        command += ["--manual_dir", str(manual_dir)]
    data_dir = Path(tempfile.mkdtemp(prefix=f"kseg-bench-{config}-", dir=tmp_root))
    command += ["--data_dir", str(data_dir)]
    log_path = data_dir.parent / f"{data_dir.name}.log"
    print(f"[{config}] {' '.join(command)}", flush=True)
    try:
        returncode, wall, peak_rss = run_measured(command, log_path)
        if returncode != 0:
            tail = log_path.read_text(errors="replace")[-4000:]
            sys.exit(f"[{config}] tfds build failed with exit code {returncode}; last output:\n{tail}")
        dataset_dir = built_dir(data_dir, config)
        splits = count_examples(dataset_dir)
        examples = sum(splits.values())
        row = {
            "config": config,
            "examples": examples,
            "splits": splits,
            "wall_s": wall,
            "examples_per_s": examples / wall,
            "peak_rss_mib": peak_rss,
            "size_mib": size_mib(dataset_dir),
            "manual_dir": str(manual_dir) if manual_dir else None,
            "command": command,
        }
    finally:
        log_path.unlink(missing_ok=True)
        if keep:
            print(f"[{config}] kept {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return row


def main(argv=None):
    args = parse_args(argv)
    data = (args.data or common.real_data_dir()).resolve()
    rows = [bench_config(config, data, args.tmp_root, args.keep) for config in args.configs]
    print()
    common.print_table(rows, COLUMNS, markdown=args.markdown)
    print(f"\n{common.NOISE_NOTE}")
    path = common.write_results(
        args.output,
        rows,
        extra={
            "data_dir": str(data),
            "columns": {
                "wall_s": "wall-clock seconds of the whole `tfds build` process, Python and TF start-up included",
                "peak_rss_mib": "peak resident memory of the build process (ru_maxrss from wait4)",
                "size_mib": "total size of the files written for the config (records, dataset_info, features)",
            },
        },
        benchmark="build_dataset",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
