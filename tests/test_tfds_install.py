"""``tfds build tfds_ph2 --imports tfds_ph2`` from any folder, with kseg installed from a wheel (not editable):
importing the ``tfds_ph2`` package must register the builder, and the wheel must carry everything it imports."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "kseg", "segio", "tfds_ph2")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> pathlib.Path:
    """A folder holding kseg, segio and tfds_ph2 installed from a freshly built wheel (``pip install --target``),
    built from a copy of the sources so that no build/ or egg-info lands in the working tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "dummy_data"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(work / "wheels")])
    wheels = list((work / "wheels").glob("kseg-*.whl"))
    assert len(wheels) == 1, wheels
    target = work / "site"
    _run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])])
    return target


def _env(site: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONSTARTUP", None)
    return env


@pytest.mark.slow
def test_wheel_holds_the_packages_and_importing_tfds_ph2_registers_the_builder(installed_wheel, tmp_path):
    probe = (
        "import json, segio.images, tfds_ph2, tensorflow_datasets as tfds; "
        "print(json.dumps({'tfds_ph2': tfds_ph2.__file__, 'segio': segio.images.__file__, "
        "'registered': 'tfds_ph2' in tfds.list_builders(with_community_datasets=False)}))"
    )
    result = _run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(installed_wheel))
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert pathlib.Path(found["tfds_ph2"]).is_relative_to(installed_wheel), found
    assert pathlib.Path(found["segio"]).is_relative_to(installed_wheel), found
    assert found["registered"]


#: What ``.venv/bin/tfds`` runs, and then which ``tfds_ph2`` it imported.
TFDS_CLI = """
import sys
from tensorflow_datasets.scripts.cli.main import launch_cli
sys.argv[0] = "tfds"
try:
    launch_cli()
finally:
    print("tfds_ph2 imported from", sys.modules["tfds_ph2"].__file__, flush=True)
"""


@pytest.mark.slow
def test_tfds_cli_builds_synthetic_from_any_folder(installed_wheel, tmp_path):
    cwd, data_dir = tmp_path / "elsewhere", tmp_path / "tensorflow_datasets"
    cwd.mkdir()
    result = _run(
        [
            sys.executable,
            "-c",
            TFDS_CLI,
            "build",
            "tfds_ph2",
            "--imports",
            "tfds_ph2",
            "--config",
            "synthetic",
            "--data_dir",
            str(data_dir),
        ],
        cwd=cwd,
        env=_env(installed_wheel),
    )
    imported_from = pathlib.Path(result.stdout.strip().splitlines()[-1].split(" imported from ", 1)[1])
    assert imported_from.is_relative_to(installed_wheel), imported_from
    infos = list(data_dir.glob("tfds_ph2/synthetic/*/dataset_info.json"))
    assert len(infos) == 1, sorted(str(p) for p in data_dir.rglob("*"))
    splits = {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in json.loads(infos[0].read_text())["splits"]}
    assert splits == {"train": 200, "validation": 50, "test": 50}
