"""Finished training runs side by side: what differs between their settings, the validation score that chose
each one's best epoch, epoch by epoch, and its test score.

Short runs that differ in one setting are the cheap way to ask which change makes a model learn faster
before paying for a full schedule; this reads what ``kseg.train`` already wrote (``config.json``,
``history.csv``, ``metrics.json``), so it trains nothing:

    .venv/bin/python -m kseg.train --preset lspet-keypoints --epochs 6 --output-dir bench/runs/base6
    .venv/bin/python -m kseg.train --preset lspet-keypoints --epochs 6 --batch-size 8 --output-dir bench/runs/b8
    .venv/bin/python bench/curves.py bench/runs/base6 bench/runs/b8 --output bench/results/curves_lspet.json

Prints a table and writes JSON (machine, versions, command, one row per run). The training minutes are
the runs' own, measured on whatever machine trained them: say which one when you quote them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

#: Settings that name where a run lives, not how it trained.
_NOT_SETTINGS = {"output_dir", "data_dir", "manual_dir"}


class RunError(Exception):
    """A folder that is not a finished kseg.train run."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished kseg.train run directories")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: bench/results/curves.json)")
    return parser.parse_args(argv)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found; give the directory of a finished kseg.train run") from None
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: unreadable ({error}); expected the JSON that kseg.train writes") from None


def read_run(run: Path) -> dict:
    """A run's config, per-epoch history (one dict per epoch) and final metrics."""
    config = _read_json(run / "config.json")
    metrics = _read_json(run / "metrics.json")
    try:
        with open(run / "history.csv", newline="") as handle:
            history = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    except FileNotFoundError:
        raise RunError(f"{run / 'history.csv'}: not found; give the directory of a finished kseg.train run") from None
    except ValueError as error:
        raise RunError(f"{run / 'history.csv'}: not a table of numbers ({error})") from None
    return {"config": config, "history": history, "metrics": metrics}


def differing_settings(configs: list[dict]) -> list[str]:
    """The config fields whose values are not the same in every run, in the configs' own order."""
    names = [name for name in configs[0] if name not in _NOT_SETTINGS]
    names += [name for config in configs[1:] for name in config if name not in names and name not in _NOT_SETTINGS]
    return [name for name in names if len({json.dumps(config.get(name)) for config in configs}) > 1]


def rows_for(runs: list[Path]) -> tuple[list[dict], str]:
    """One row per run and the name of the validation score they share."""
    from kseg import tasks

    read = [read_run(run) for run in runs]
    task_names = {entry["config"].get("task", tasks.SEMANTIC) for entry in read}
    if len(task_names) > 1:
        raise RunError(f"these runs train different tasks ({', '.join(sorted(task_names))}); compare runs of one task")
    task = tasks.get(task_names.pop())
    differing = differing_settings([entry["config"] for entry in read])
    rows = []
    for run, entry in zip(runs, read):
        curve = [epoch.get(task.monitor) for epoch in entry["history"]]
        key = task.headline[0]
        rows.append(
            {
                "run": str(run),
                "settings": ", ".join(f"{name}={json.dumps(entry['config'].get(name))}" for name in differing) or "-",
                "curve": curve,
                "best_validation": max((value for value in curve if value is not None), default=None),
                "best_epoch": entry["metrics"].get("best_epoch"),
                f"test_{key}": entry["metrics"].get("test", {}).get(key),
                "train_min": round(entry["metrics"].get("train_seconds", 0) / 60, 1) or None,
                "precision": entry["metrics"].get("precision"),
            }
        )
    return rows, task.monitor


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rows, monitor = rows_for(args.runs)
    except RunError as error:
        print(f"bench/curves.py: {error}", file=sys.stderr)
        return 2
    epochs = max(len(row["curve"]) for row in rows)
    three_places = lambda value: None if value is None else f"{value:.3f}"
    table = [
        {
            **row,
            **{f"e{i + 1}": three_places(value) for i, value in enumerate(row["curve"])},
            "test": three_places(next(value for key, value in row.items() if key.startswith("test_"))),
        }
        for row in rows
    ]
    columns = ["run", "settings", *(f"e{i + 1}" for i in range(epochs)), "test", "train_min"]
    print(f"{monitor} after each epoch; test: the run's own test score of its kept model")
    common.print_table(table, columns)
    output = args.output or common.RESULTS_DIR / "curves.json"
    common.write_results(output, rows, extra={"monitor": monitor})
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
