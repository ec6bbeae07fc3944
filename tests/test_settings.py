"""Every setting checked for type and range in one place: config files (YAML, JSON) and flags go through the
same checkers (``kseg.core.settings``, the field table of ``kseg.training.config.TrainConfig``), so a bad value is
one line naming the field or flag, what was expected and (bounded) what was given; nothing is created for it.

Commands are called through their ``main(argv)``: a bad config value comes back as ``kseg.<cmd>: error: ...``
with exit status 2; a bad numeric flag is refused by argparse (``usage`` and ``error: argument --flag: ...``,
``SystemExit(2)``) before the command starts.
"""

import glob
import time

import pytest

from kseg import evaluate, show, train
from kseg.training import config

MAX_SEED = 2**32 - 1


def error_line(err: str, prog: str) -> str:
    """The one line a refused command prints, alone on stderr, without a traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0][len(f"{prog}: error: ") :]


def train_with(tmp_path, *args):
    """``kseg.train`` with a run directory and an empty TFDS data dir: the default preset's PH2 is not there,
    so a value that passed its check would stop at once (no test trains)."""
    return train.main([*args, "--data-dir", str(tmp_path / "tfds"), "--output-dir", str(tmp_path / "run")])


def argparse_error(capsys, call) -> str:
    """What argparse printed after ``error: `` when ``call`` exits with status 2 (a bad flag)."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage: "), err
    return err.strip().splitlines()[-1].split(" error: ", 1)[1]


# ----------------------------------------------------------------------------------- config files ---


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.yaml", "epochs: true\n", "epochs: expected an integer in [1, 100000], got True (a boolean)"),
        ("c.yaml", "batch_size: yes\n", "batch_size: expected an integer in [1, 4096], got True (a boolean)"),
        ("c.yaml", "seed: ~\n", f"seed: expected an integer in [0, {MAX_SEED}], got null"),
        ("c.yaml", "seed: -1\n", f"seed: expected an integer in [0, {MAX_SEED}], got -1"),
        ("c.yaml", f"seed: {2**70}\n", f"seed: expected an integer in [0, {MAX_SEED}], got {2**70}"),
        ("c.yaml", "epochs: 1e23\n", "epochs: expected an integer in [1, 100000], got '1e23'"),  # YAML 1.1: text
        ("c.json", '{"epochs": 1e23}', "epochs: expected an integer in [1, 100000], got 1e+23"),
        ("c.yaml", "epochs: 2.5\n", "epochs: expected an integer in [1, 100000], got 2.5"),
        ("c.yaml", "learning_rate: .nan\n", "learning_rate: expected a number in (0, 10], got nan"),
        ("c.yaml", "weight_decay: .inf\n", "weight_decay: expected a number in [0, 1], got inf"),
        ("c.yaml", "dropout: true\n", "dropout: expected a number in [0, 1), got True (a boolean)"),
        ("c.json", '{"threshold": NaN}', "threshold: expected a number in (0, 1), got nan"),
        ("c.yaml", "steps_per_epoch: 0\n", "steps_per_epoch: expected an integer in [1, 1000000], got 0"),
        ("c.yaml", "mixed_precision: 1\n", "mixed_precision: expected true or false, got 1"),
        (
            "c.yaml",
            "dataset: [tfds_ph2/ph2, tfds_ph2/mads]\n",
            "dataset: expected a TFDS name like tfds_ph2/ph2, folder:PATH or coco:FILE.json, got "
            "['tfds_ph2/ph2', 'tfds_ph2/mads'] (a list)",
        ),
        ("c.yaml", "manual_dir: 7\n", "manual_dir: expected a folder path (text of 1 to 4096 characters), got 7"),
        ("c.yaml", "1: 2\n", "config file {path}: expected field names, got 1"),
        (
            "c.yaml",
            "dataset: folder:/nowhere\nnum_classes: 300\n",
            "num_classes: expected an integer in [1, 256], got 300",
        ),
        (
            "c.yaml",
            "num_classes: 3\n",
            "num_classes (--num-classes): applies to folder: datasets only; 'tfds_ph2/ph2' is a TFDS dataset, "
            "which declares its own classes (got 3)",
        ),
        (
            "c.yaml",
            "dataset: folder:/nowhere\nmanual_dir: /downloads\n",
            "manual_dir (--manual-dir): applies to TFDS datasets only (a build reads its download there); "
            "'folder:/nowhere' is a folder dataset, read as it is (got '/downloads')",
        ),
        (
            "c.yaml",
            "tpu: my-tpu\n",
            "tpu (--tpu): applies to strategy 'tpu' only, and the strategy is 'auto' (got 'my-tpu')",
        ),
    ],
)
def test_a_bad_config_value_is_one_line_and_nothing_is_created(name, text, expected, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    assert train_with(tmp_path, "--config", str(path)) == 2
    assert error_line(capsys.readouterr().err, "kseg.train") == expected.format(path=path)
    assert not (tmp_path / "run").exists()


def test_numbers_yaml_reads_as_text_are_numbers(tmp_path):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a number field takes it as the number it says."""
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\nepochs: '12'\n")
    resolved = config.resolve(config.read_config_file(path))
    assert (resolved.learning_rate, resolved.epochs) == (0.001, 12)


def test_every_preset_resolves_and_takes_no_class_count(tmp_path):
    """The presets pass the field table; all of them read TFDS datasets, which declare their own classes."""
    for name in config.TRAINING_PRESETS:
        resolved = config.resolve(overrides={"preset": name})
        assert resolved.preset == name
        assert config.resolve(overrides={"preset": name, "num_classes": None}) == resolved
        with pytest.raises(config.ConfigError, match=r"^num_classes \(--num-classes\): applies to folder: datasets"):
            config.resolve(overrides={"preset": name, "num_classes": 2})


def _alias_bomb(levels: int) -> str:
    """A "billion laughs" YAML file: each level a list of 9 aliases of the one before (9**levels leaves)."""
    lines = ["dataset:", '  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_named_in_a_short_line_at_once(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))  # a full repr would be gigabytes
    start = time.perf_counter()
    code = train_with(tmp_path, "--config", str(path))
    elapsed = time.perf_counter() - start
    line = error_line(capsys.readouterr().err, "kseg.train")
    assert code == 2 and elapsed < 0.5
    expected = "dataset: expected a TFDS name like tfds_ph2/ph2, folder:PATH or coco:FILE.json, got [['lol', "
    assert line.startswith(expected)
    assert line.endswith("(a list)") and len(line) < 400
    assert not (tmp_path / "run").exists()


def test_values_in_messages_are_bounded_whatever_their_size():
    from kseg.core import settings

    bomb = ["lol"]
    for _ in range(60):  # 2**60 leaves: only a repr that stops early can finish
        bomb = [bomb, bomb]
    start = time.perf_counter()
    texts = [settings.shown(bomb), settings.shown("x" * 10**6), settings.shown(10**5000), settings.shown({1: bomb})]
    assert time.perf_counter() - start < 0.1
    assert all(len(text) < 200 for text in texts), texts
    assert settings.shown(10**5000) == "<an integer of about 5001 digits>"


# ------------------------------------------------------------------------------------------ flags ---


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--epochs", "1e23"], "argument --epochs: expected an integer in [1, 100000], got '1e23'"),
        (["--epochs", "0"], "argument --epochs: expected an integer in [1, 100000], got '0'"),
        (["--batch-size", "2.5"], "argument --batch-size: expected an integer in [1, 4096], got '2.5'"),
        (["--logical-cpus", "0"], "argument --logical-cpus: expected an integer in [1, 64], got '0'"),
        (["--logical-cpus", "-2"], "argument --logical-cpus: expected an integer in [1, 64], got '-2'"),
        (["--num-classes", "0"], "argument --num-classes: expected an integer in [1, 256], got '0'"),
        (["--num-classes", "300"], "argument --num-classes: expected an integer in [1, 256], got '300'"),
        (["--seed", "-1"], f"argument --seed: expected an integer in [0, {MAX_SEED}], got '-1'"),
        (["--seed", str(2**32)], f"argument --seed: expected an integer in [0, {MAX_SEED}], got '{2**32}'"),
        (["--learning-rate", "nan"], "argument --learning-rate: expected a number in (0, 10], got 'nan'"),
        (["--weight-decay", "inf"], "argument --weight-decay: expected a number in [0, 1], got 'inf'"),
        (["--dropout", "1"], "argument --dropout: expected a number in [0, 1), got '1'"),
        (["--threshold", "1"], "argument --threshold: expected a number in (0, 1), got '1'"),
        (
            ["--encoder-lr-multiplier", "0"],
            "argument --encoder-lr-multiplier: expected a number in (0, 1], got '0'",
        ),
    ],
)
def test_train_flags_use_the_config_checkers(args, expected, tmp_path, capsys):
    assert argparse_error(capsys, lambda: train_with(tmp_path, *args)) == expected
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--batch-size", "0"], "argument --batch-size: expected an integer in [1, 4096], got '0'"),
        (["--threshold", "nan"], "argument --threshold: expected a number in (0, 1), got 'nan'"),
        (["--num-classes", "257"], "argument --num-classes: expected an integer in [1, 256], got '257'"),
    ],
)
def test_evaluate_flags_use_the_same_checkers(args, expected, tmp_path, capsys):
    argv = ["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "eval"), *args]
    assert argparse_error(capsys, lambda: evaluate.main(argv)) == expected
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("count", ["0", "-3", "101", "2.0"])
def test_show_count_is_checked_by_its_flag(count, tmp_path, capsys):
    argv = [f"folder:{tmp_path / 'data'}", "-n", count, "--out", str(tmp_path / "grid.png")]
    expected = f"argument -n/--count: expected an integer in [1, 100], got '{count}'"
    assert argparse_error(capsys, lambda: show.main(argv)) == expected
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- flags that do not apply ---


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--num-classes", "3"],
            "num_classes (--num-classes): applies to folder: datasets only; 'tfds_ph2/ph2' is a TFDS dataset, "
            "which declares its own classes (got 3)",
        ),
        (
            ["--dataset", "folder:/nowhere", "--manual-dir", "/downloads"],
            "manual_dir (--manual-dir): applies to TFDS datasets only (a build reads its download there); "
            "'folder:/nowhere' is a folder dataset, read as it is (got '/downloads')",
        ),
        (
            ["--preset", "synthetic-unet", "--encoder-lr-multiplier", "0.1"],
            "encoder_lr_multiplier (--encoder-lr-multiplier): applies to models with a pretrained encoder only "
            "(unet-lite0, unet-vgg16, segnet-vgg16); 'unet-small' has none (got 0.1)",
        ),
        (
            ["--schedule", "constant", "--warmup-epochs", "2"],
            "warmup_epochs (--warmup-epochs): applies to the cosine schedule only (its linear warm-up); the "
            "schedule is 'constant' (got 2)",
        ),
        (
            ["--strategy", "mirrored", "--tpu", "grpc://10.0.0.2:8470"],
            "tpu (--tpu): applies to strategy 'tpu' only, and the strategy is 'mirrored' (got 'grpc://10.0.0.2:8470')",
        ),
    ],
)
def test_train_refuses_a_flag_that_does_not_apply(args, expected, tmp_path, capsys):
    assert train_with(tmp_path, *args) == 2
    assert error_line(capsys.readouterr().err, "kseg.train") == expected
    assert not (tmp_path / "run").exists()  # so no config.json records it as if it had been used


def test_evaluate_refuses_a_class_count_for_a_tfds_dataset(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "eval")]
    code = evaluate.main([*argv, "--dataset", "tfds_ph2/synthetic", "--num-classes", "2"])
    assert code == 2
    assert error_line(capsys.readouterr().err, "kseg.evaluate") == (
        "--num-classes: applies to folder: datasets only; 'tfds_ph2/synthetic' is a TFDS dataset, which declares "
        "its own classes (got 2)"
    )
    assert not (tmp_path / "eval").exists()


def test_strategy_tpu_without_a_tpu_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        pytest.skip("this machine has a TPU")
    for variable in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    start = time.perf_counter()
    code = train_with(tmp_path, "--strategy", "tpu")
    assert code == 2 and time.perf_counter() - start < 10
    assert error_line(capsys.readouterr().err, "kseg.train") == (
        "--strategy tpu: this machine has no TPU (no /dev/accel* or /dev/vfio/N device) and none was named; pass "
        "--tpu NAME or grpc://HOST:PORT (or set TPU_NAME), or choose another --strategy"
    )
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- kseg.show ---


@pytest.mark.parametrize("name", ["grids", "grids.png"])
def test_show_out_naming_an_existing_folder_is_refused(name, tmp_path, capsys):
    folder = tmp_path / name
    folder.mkdir()
    argv = [f"folder:{tmp_path / 'data'}", "-n", "2", "--out", str(folder)]
    assert show.main(argv) == 2
    assert error_line(capsys.readouterr().err, "kseg.show") == (
        f"--out {folder} is an existing folder; expected a PNG file name, e.g. {folder / 'samples.png'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and not list(folder.iterdir())
