"""bench/train.py reuses a recorded seed only when today's preset would train the same recipe."""

import dataclasses
import json
import sys
from argparse import Namespace

import pytest

from kseg.training import config as config_lib


@pytest.fixture
def bench_train(load_bench_script, monkeypatch, tmp_path):
    module = load_bench_script("train")
    monkeypatch.setattr(sys.modules["common"], "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(sys.modules["common"], "REPO_ROOT", tmp_path)
    return module


def _write_results(path, preset, overrides, config):
    row = {"seed": 0, "test_dice": 0.9, "config": config.to_dict()}
    path.write_text(json.dumps({"preset": preset, "train_overrides": overrides, "results": [row]}))


def test_recorded_seed_is_reused_for_the_same_recipe_only(bench_train, tmp_path):
    args = Namespace(tag="mads", preset="mads-unet-lite0", rerun=False)
    today = config_lib.resolve(overrides={"preset": "mads-unet-lite0", "output_dir": "elsewhere", "seed": 0})
    _write_results(tmp_path / "train_mads.json", "mads-unet-lite0", [], today)
    assert bench_train.recorded_row(args, 0, [])["test_dice"] == 0.9
    assert bench_train.recorded_row(args, 1, []) is None  # a seed not recorded
    assert bench_train.recorded_row(Namespace(tag="mads", preset="mads-unet-lite0", rerun=True), 0, []) is None

    older = dataclasses.replace(today, image_size=(256, 256), epochs=30)  # the preset changed since
    _write_results(tmp_path / "train_mads.json", "mads-unet-lite0", [], older)
    assert bench_train.recorded_row(args, 0, []) is None
    overrides = ["--image-size", "256x256", "--epochs", "30"]
    _write_results(tmp_path / "train_mads.json", "mads-unet-lite0", overrides, older)
    assert bench_train.recorded_row(args, 0, overrides)["test_dice"] == 0.9
