"""Helpers shared by the benchmark scripts: where the real data is, what machine ran, and output.

Imports nothing heavy at module level, so a script can use it before (or without) importing TensorFlow.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any TensorFlow import: keep tables readable
NOISE_NOTE = (
    "Timings are wall-clock on whatever machine ran them; on a small or shared CPU "
    "(e.g. 2 cores shared with other jobs) expect run-to-run differences of 10-30%."
)

if str(REPO_ROOT) not in sys.path:  # runnable as `python bench/x.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from kseg.core.defaults import DATA_DIR_ENV  # noqa: E402  (kseg.core.defaults imports nothing heavy)


def real_data_dir() -> Path:
    """The folder holding ``PH2Dataset/`` and ``bodies/``: ``$KSEG_DATA_DIR``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT.parent / "shared" / "data").resolve()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_memory_mib():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def _version(module_name: str):
    try:
        module = __import__(module_name)
    except Exception:  # noqa: BLE001 - a missing optional package is just "None" here
        return None
    return getattr(module, "__version__", None)


def cpu_features() -> dict:
    """What decides whether bfloat16 pays on this CPU (kseg.core.distribute.precision_policy): AMX, AVX512_BF16."""
    from kseg.core import distribute  # imports TensorFlow: only when the results are written

    flags = distribute.cpu_flags(distribute.read_cpuinfo())
    return {
        "cpu_model": _cpu_model(),
        "amx_bf16": distribute.cpu_has_amx_bf16(flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "bf16_flags": sorted(f for f in flags if f.startswith("amx") or "bf16" in f),
        "mixed_precision_policy": distribute.precision_policy(True),
    }


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees, by the card's name where the driver reports one ("NVIDIA H100 80GB HBM3"),
    else by TensorFlow's device name: a GPU figure means little without the card."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu) or {}
        names.append(details.get("device_name") or gpu.name)
    return names


def environment() -> dict:
    """Machine and library versions: enough to tell whether two result files are comparable."""
    env = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "total_memory_mib": round(_total_memory_mib() or 0, 1) or None,
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "tensorflow_datasets": _version("tensorflow_datasets"),
        "numpy": _version("numpy"),
        "kseg": _version("kseg"),
    }
    try:
        env["gpus"] = gpu_names()
    except Exception:  # noqa: BLE001
        env["gpus"] = None
    env["gpu_visible"] = bool(env["gpus"])
    try:
        env["cpu_features"] = cpu_features()
    except Exception:  # noqa: BLE001 - a benchmark must not fail for want of CPU details
        env["cpu_features"] = None
    return env


def write_results(path, rows, extra=None, benchmark=None) -> Path:
    """Write ``{"benchmark", "command", "timestamp", "environment", "results", **extra}`` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": benchmark or Path(sys.argv[0]).stem,
        "command": " ".join(sys.argv),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "note": NOISE_NOTE,
        "results": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def format_table(rows, columns, markdown=False) -> str:
    """Rows (dicts) as an aligned text table; ``columns`` is a list of keys or ``(key, header)`` pairs."""
    columns = [(c, c) if isinstance(c, str) else tuple(c) for c in columns]
    headers = [header for _, header in columns]
    body = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    numeric = [
        all(r[i].replace(".", "", 1).replace("-", "", 1).isdigit() or r[i] == "-" for r in body) and body
        for i in range(len(headers))
    ]
    align = lambda text, i: text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])
    if markdown:
        lines = [
            "| " + " | ".join(align(h, i) for i, h in enumerate(headers)) + " |",
            "|"
            + "|".join(("-" * (w + 1) + ":") if numeric[i] else ("-" * (w + 2)) for i, w in enumerate(widths))
            + "|",
        ]
        lines += ["| " + " | ".join(align(c, i) for i, c in enumerate(r)) + " |" for r in body]
    else:
        lines = ["  ".join(align(h, i) for i, h in enumerate(headers)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(align(c, i) for i, c in enumerate(r)).rstrip() for r in body]
    return "\n".join(lines)


def print_table(rows, columns, markdown=False) -> None:
    print(format_table(rows, columns, markdown), flush=True)
