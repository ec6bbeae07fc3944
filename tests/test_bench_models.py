"""bench/models.py compares float32 with the mixed policy kseg trains with on the device it runs on, and its
results name the GPU by its card."""

from types import SimpleNamespace

import pytest


@pytest.fixture
def bench_models(load_bench_script):
    return load_bench_script("models")


@pytest.mark.parametrize(
    "device, expected",
    [
        ("gpu", ["float32", "mixed_float16"]),
        ("cpu", ["float32", "mixed_bfloat16"]),
        ("tpu", ["float32", "mixed_bfloat16"]),
    ],
)
def test_mixed_precision_measures_the_devices_own_mixed_policy(bench_models, monkeypatch, device, expected):
    from kseg.core import distribute

    # A CPU whose policy keeps float32 (no AMX) is still measured in bfloat16: that is the comparison asked for.
    monkeypatch.setattr(distribute, "read_cpuinfo", lambda: "flags\t\t: avx512f\n")
    assert bench_models.measured_policies(True, device=device) == expected
    assert bench_models.measured_policies(False, device=device) == ["float32"]


def test_gpus_are_named_by_their_card(load_bench_script, monkeypatch):
    import tensorflow as tf

    common = load_bench_script("common")
    devices = [SimpleNamespace(name="/physical_device:GPU:0"), SimpleNamespace(name="/physical_device:GPU:1")]
    details = {devices[0].name: {"device_name": "NVIDIA H100 80GB HBM3"}, devices[1].name: {}}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: details[device.name])
    assert common.gpu_names() == ["NVIDIA H100 80GB HBM3", "/physical_device:GPU:1"]
