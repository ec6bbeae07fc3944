"""``kseg.export`` writes only versions TF Serving can load, and a refused or failed export leaves nothing.

TF Serving reads version folder names as int64, so ``--version`` is checked against that range (and
``--max-megapixels`` for a finite, positive number) by argparse before anything is read or created; a folder
in the model folder whose digits are no int64 is passed over with a warning when the next version is chosen,
and a failed export removes the model (and export) folder it created while that is empty.

Uses conftest's ``trained_synthetic_run``; exports are few (each takes seconds), and the model folder is
listed after each refused one.
"""

import pytest

from kseg import export
from kseg.core import serving_contract
from kseg.serving import saved_model_export
from kseg.tasks import postprocess

MAX_VERSION = 2**63 - 1


def refused_flag(capsys, argv) -> str:
    """argparse's ``error: argument ...`` line for a bad flag (``SystemExit(2)``, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        export.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("usage: "), err
    return err.strip().splitlines()[-1].split(" error: ", 1)[1]


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if " error: " in line]
    assert len(lines) == 1 and lines[0].startswith("kseg.export: error: "), err
    return lines[0][len("kseg.export: error: ") :]


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--version", str(10**29), f"expected an integer in [1, {MAX_VERSION}], got '{10**29}'"),
        ("--version", str(2**63), f"expected an integer in [1, {MAX_VERSION}], got '{2**63}'"),
        ("--version", "0", f"expected an integer in [1, {MAX_VERSION}], got '0'"),
        ("--max-megapixels", "nan", "expected a number in (0, 1000], got 'nan'"),
        ("--max-megapixels", "inf", "expected a number in (0, 1000], got 'inf'"),
        ("--max-megapixels", "0", "expected a number in (0, 1000], got '0'"),
        ("--max-megapixels=-5", None, "expected a number in (0, 1000], got '-5'"),
    ],
)
def test_out_of_range_flags_are_refused_before_anything_is_created(
    flag, value, expected, trained_synthetic_run, tmp_path, capsys
):
    models = tmp_path / "models"
    argv = ["--model", str(trained_synthetic_run), "--export-dir", str(models), flag, *([value] if value else [])]
    assert refused_flag(capsys, argv) == f"argument {flag.split('=')[0]}: {expected}"
    assert not models.exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"version": 2**63}, f"--version: expected an integer in [1, {MAX_VERSION}], got {2**63}"),
        ({"version": True}, f"--version: expected an integer in [1, {MAX_VERSION}], got True (a boolean)"),
        ({"max_megapixels": float("nan")}, "--max-megapixels: expected a number in (0, 1000], got nan"),
        ({"name": ""}, "--name '': use 1 to 128 letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ({"name": None}, "--name null: use 1 to 128 letters, digits, '.', '_' and '-', starting with a letter or"),
    ],
)
def test_export_model_checks_its_arguments_the_same_way(arguments, expected, trained_synthetic_run, tmp_path):
    """Callers in Python get the flags' checks, before the model is read or a folder made."""
    models = tmp_path / "models"
    with pytest.raises(saved_model_export.ExportError) as error:
        saved_model_export.export_model(trained_synthetic_run, models, **arguments)
    assert str(error.value).startswith(expected)
    assert not models.exists()


def test_an_empty_name_is_refused_not_exported_as_kseg(trained_synthetic_run, tmp_path, capsys):
    models = tmp_path / "models"
    code = export.main(["--model", str(trained_synthetic_run), "--export-dir", str(models), "--name", ""])
    assert code == 2
    assert error_line(capsys.readouterr().err).startswith("--name '': use 1 to 128 letters, digits")
    assert not models.exists()


def test_a_version_folder_beyond_int64_does_not_poison_the_next_version(trained_synthetic_run, tmp_path, capsys):
    model_dir = tmp_path / "models" / "m"
    huge = model_dir / str(10**29)
    for folder in (model_dir / "3", huge, model_dir / "\u0664"):  # 3, beyond int64, an Arabic-Indic 4
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"not really")
    code = export.main(["--model", str(trained_synthetic_run), "--export-dir", str(tmp_path / "models"), "--name", "m"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"to {model_dir / '4'}" in captured.out
    assert (
        f"kseg.export: warning: {huge} is not a version TF Serving can load (versions are integers up to "
        f"{MAX_VERSION}); passed over when choosing the next version"
    ) in captured.err
    assert listing(model_dir) == sorted(["3", "4", str(10**29), "\u0664"])
    assert serving_contract.newest_version_dir(model_dir) == model_dir / "4"  # what TF Serving serves

    # The highest int64 taken: no automatic version is left, and nothing is written.
    (model_dir / str(MAX_VERSION)).mkdir()
    code = export.main(["--model", str(trained_synthetic_run), "--export-dir", str(tmp_path / "models"), "--name", "m"])
    assert code == 2
    assert error_line(capsys.readouterr().err) == (
        f"{model_dir} holds version {MAX_VERSION}, the highest there is; pass --version"
    )
    assert listing(model_dir) == sorted(["3", "4", str(10**29), str(MAX_VERSION), "\u0664"])


def test_a_failed_export_removes_the_folders_it_created(trained_synthetic_run, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(postprocess, "write", fail)  # fails after the SavedModel itself is staged
    models = tmp_path / "export" / "models"
    with pytest.raises(saved_model_export.ExportWriteError, match="No space left on device"):
        saved_model_export.export_model(trained_synthetic_run, models, name="m")
    assert listing(tmp_path) == []  # export/models/m were all made by this export: all gone

    # A model folder that was there before stays, as it was.
    (models / "m" / "1").mkdir(parents=True)
    with pytest.raises(saved_model_export.ExportWriteError):
        saved_model_export.export_model(trained_synthetic_run, models, name="m", version=2)
    assert listing(models / "m") == ["1"]
