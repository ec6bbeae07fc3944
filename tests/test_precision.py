"""The per-device precision choice: float16 on GPUs, bfloat16 on TPUs, and on CPUs bfloat16 only where it
was measured faster than float32 (AMX, or AMD with AVX512_BF16), with a way to force either on a CPU."""

import logging

import pytest

from kseg.core import distribute

# /proc/cpuinfo excerpts: a Sapphire Rapids Xeon with AMX, the same CPU under a hypervisor that hides AMX,
# an AMD Zen 4 EPYC (AVX512_BF16, no AMX), a Zen 3 one, and an older Intel CPU with neither.
AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
AVX512_BF16_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni avx512_fp16
"""
AMD_ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9454 48-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
"""
AMD_ZEN3_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""
PLAIN_CPUINFO = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-8700
flags\t\t: fpu sse2 avx2 fma
"""


@pytest.fixture(autouse=True)
def no_forced_setting(monkeypatch):
    """The machine running the tests may have KSEG_CPU_BFLOAT16 set; the tests set it themselves."""
    monkeypatch.delenv(distribute.CPU_BFLOAT16_ENV, raising=False)


def test_cpu_flags_reads_the_first_flags_line():
    assert distribute.cpu_flags(AMX_CPUINFO) >= {"amx_bf16", "amx_tile", "avx512_bf16"}
    assert distribute.cpu_flags(PLAIN_CPUINFO) == {"fpu", "sse2", "avx2", "fma"}
    assert distribute.cpu_flags("") == set()


def test_amx_needs_tiles_and_bf16():
    assert distribute.cpu_has_amx_bf16(distribute.cpu_flags(AMX_CPUINFO))
    assert not distribute.cpu_has_amx_bf16(distribute.cpu_flags(AVX512_BF16_CPUINFO))
    assert not distribute.cpu_has_amx_bf16({"amx_tile", "amx_int8"})  # int8 tiles alone do not do bfloat16


@pytest.mark.parametrize(
    "device, cpuinfo, expected",
    [
        ("gpu", PLAIN_CPUINFO, "mixed_float16"),
        ("gpu", AMX_CPUINFO, "mixed_float16"),
        ("tpu", PLAIN_CPUINFO, "mixed_bfloat16"),
        ("cpu", AMX_CPUINFO, "mixed_bfloat16"),
        ("cpu", AVX512_BF16_CPUINFO, "float32"),
        ("cpu", AMD_ZEN4_CPUINFO, "mixed_bfloat16"),
        ("cpu", AMD_ZEN3_CPUINFO, "float32"),
        ("cpu", PLAIN_CPUINFO, "float32"),
        ("cpu", "", "float32"),  # no /proc/cpuinfo (not Linux): no AMX known
    ],
)
def test_policy_per_device(device, cpuinfo, expected):
    assert distribute.precision_policy(True, device=device, cpuinfo_text=cpuinfo) == expected


@pytest.mark.parametrize("device", ["cpu", "gpu", "tpu"])
def test_disabled_is_float32_everywhere(device, monkeypatch):
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, "1")
    assert distribute.precision_policy(False, device=device, cpuinfo_text=AMX_CPUINFO) == "float32"


def test_what_pays_names_the_cpu_features():
    assert distribute.cpu_bfloat16_pays(AMX_CPUINFO) == (True, "AMX")
    assert distribute.cpu_bfloat16_pays(AMD_ZEN4_CPUINFO) == (True, "AVX512_BF16 (AMD)")
    assert distribute.cpu_bfloat16_pays(AVX512_BF16_CPUINFO) == (False, "AVX512_BF16 but no AMX")
    assert distribute.cpu_bfloat16_pays(AMD_ZEN3_CPUINFO) == (False, "neither AMX nor AVX512_BF16")


def test_cpu_without_amx_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="kseg.core.distribute"):
        distribute.precision_policy(True, device="cpu", cpuinfo_text=AVX512_BF16_CPUINFO)
    messages = [r.getMessage() for r in caplog.records if r.name == "kseg.core.distribute"]
    assert len(messages) == 1
    assert "AVX512_BF16 but no AMX" in messages[0] and distribute.CPU_BFLOAT16_ENV in messages[0]


def test_cpu_with_amx_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="kseg.core.distribute"):
        distribute.precision_policy(True, device="cpu", cpuinfo_text=AMX_CPUINFO)
    assert not [r for r in caplog.records if r.name == "kseg.core.distribute"]


def test_argument_forces_the_cpu_choice():
    assert (
        distribute.precision_policy(True, device="cpu", cpuinfo_text=PLAIN_CPUINFO, cpu_bfloat16=True)
        == "mixed_bfloat16"
    )
    assert distribute.precision_policy(True, device="cpu", cpuinfo_text=AMX_CPUINFO, cpu_bfloat16=False) == "float32"


@pytest.mark.parametrize(
    "value, cpuinfo, expected",
    [
        ("1", PLAIN_CPUINFO, "mixed_bfloat16"),
        ("true", AVX512_BF16_CPUINFO, "mixed_bfloat16"),
        ("0", AMX_CPUINFO, "float32"),
        ("", AMX_CPUINFO, "mixed_bfloat16"),  # empty: as if unset
    ],
)
def test_environment_variable_forces_the_cpu_choice(value, cpuinfo, expected, monkeypatch):
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, value)
    assert distribute.precision_policy(True, device="cpu", cpuinfo_text=cpuinfo) == expected


def test_forcing_leaves_gpus_alone(monkeypatch):
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, "1")
    assert distribute.precision_policy(True, device="gpu", cpuinfo_text=PLAIN_CPUINFO) == "mixed_float16"


def test_argument_wins_over_environment_variable(monkeypatch):
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, "1")
    assert distribute.precision_policy(True, device="cpu", cpuinfo_text=AMX_CPUINFO, cpu_bfloat16=False) == "float32"


def test_bad_environment_value_is_an_error(monkeypatch):
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, "maybe")
    with pytest.raises(ValueError, match=distribute.CPU_BFLOAT16_ENV):
        distribute.precision_policy(True, device="cpu", cpuinfo_text=AMX_CPUINFO)


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="device"):
        distribute.precision_policy(True, device="npu")


def test_this_machine_gets_a_valid_policy():
    """Detection on the machine running the tests: no device given, its own /proc/cpuinfo."""
    policy = distribute.precision_policy(True)
    assert policy in ("mixed_float16", "mixed_bfloat16", "float32")
    if distribute.accelerator_kind() == "cpu":
        pays, _ = distribute.cpu_bfloat16_pays(distribute.read_cpuinfo())
        assert policy == ("mixed_bfloat16" if pays else "float32")


def test_training_precision_scope_follows_the_policy(monkeypatch):
    """kseg's training sets the policy through precision_policy: forcing float32 on a CPU reaches Keras."""
    import keras

    from kseg.training import config, setup

    if distribute.accelerator_kind() != "cpu":
        pytest.skip("checks the CPU choice")
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, "0")
    resolved = config.resolve(overrides={"preset": "ph2-unet"})
    assert resolved.mixed_precision
    with setup.precision_scope(resolved):
        assert keras.mixed_precision.global_policy().name == "float32"
    monkeypatch.setenv(distribute.CPU_BFLOAT16_ENV, "1")
    with setup.precision_scope(resolved):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_default_preset_asks_for_mixed_precision_which_is_bfloat16_only_with_amx():
    """ph2-unet-lite0 asks for mixed precision since bfloat16 measured as good as float32 there
    (docs/benchmarks.md): on a CPU that means bfloat16 with AMX and float32 without."""
    from kseg.training import config

    preset = config.resolve(overrides={"preset": config.DEFAULT_PRESET})
    assert preset.mixed_precision
    policy = lambda cpuinfo: distribute.precision_policy(preset.mixed_precision, device="cpu", cpuinfo_text=cpuinfo)
    assert policy(AMX_CPUINFO) == "mixed_bfloat16"
    assert policy(AVX512_BF16_CPUINFO) == "float32"
    assert policy(PLAIN_CPUINFO) == "float32"
