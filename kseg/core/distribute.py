"""Choosing a ``tf.distribute`` strategy and a precision policy from a config.

``auto`` picks mirrored for several GPUs, one device for one GPU and the default strategy on CPU. On a
CPU-only machine ``logical_cpus`` splits the CPU into several logical devices, so that mirrored training
(and its tests) can run without GPUs.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import tensorflow as tf

from kseg.core.errors import UsageError
from kseg.core.settings import clip, shown

log = logging.getLogger(__name__)


def split_cpu(logical_cpus: int) -> None:
    """Expose ``logical_cpus`` logical CPU devices; must run before TensorFlow first touches a device."""
    if logical_cpus <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    except RuntimeError as e:
        raise UsageError(
            f"--logical-cpus: cannot split the CPU into {logical_cpus} devices after TensorFlow started: {e}"
        ) from None


def resolve_name(name: str) -> str:
    if name != "auto":
        return name
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return "mirrored"
    return "one_device" if len(gpus) == 1 else "default"


def make_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy called ``name`` (see ``kseg.training.config.STRATEGIES``)."""
    name = resolve_name(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError(
                "strategy multiworker needs TF_CONFIG describing the cluster and this worker's task "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}})'
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise UsageError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return tpu_strategy(tpu)
    raise UsageError(f"unknown strategy {name!r}")


#: Device files of a TPU attached to this machine: /dev/accel* (TPU v2-v4 VMs), /dev/vfio/N (v5e and later).
LOCAL_TPU_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*")
#: Environment variables through which Cloud TPU set-ups name their TPU (TPUClusterResolver reads them).
TPU_ENVIRONMENT = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG")


def local_tpu_devices() -> list[str]:
    return sorted(path for pattern in LOCAL_TPU_DEVICES for path in glob.glob(pattern))


def tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    """A ``TPUStrategy`` on the TPU named ``tpu`` (a name or ``grpc://`` address), else on this machine's own
    TPU, else on the one the environment names. With none of them there is nothing to connect to: say so at
    once, before TensorFlow's resolver raises or waits on the Cloud metadata server."""
    if not tpu:
        if local_tpu_devices():
            tpu = "local"
        elif not any(os.environ.get(variable) for variable in TPU_ENVIRONMENT):
            raise UsageError(
                "--strategy tpu: this machine has no TPU (no /dev/accel* or /dev/vfio/N device) and none was "
                "named; pass --tpu NAME or grpc://HOST:PORT (or set TPU_NAME), or choose another --strategy"
            )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as e:  # noqa: BLE001  (the resolver, the metadata server and the runtime raise many types)
        where = shown(tpu) if tpu else "named by " + ", ".join(v for v in TPU_ENVIRONMENT if os.environ.get(v))
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--strategy tpu: cannot use the TPU {where}: {clip(detail)}") from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, models and reports (worker 0 or the chief task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


#: ``1`` forces bfloat16 mixed precision on any CPU, ``0`` forces float32 on any CPU (e.g. to benchmark both).
CPU_BFLOAT16_ENV = "KSEG_CPU_BFLOAT16"


def read_cpuinfo() -> str:
    """The text of ``/proc/cpuinfo``, or ``""`` where there is none (not Linux): no flags, so no AMX."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return cpuinfo.read()
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo_text: str, field: str) -> str:
    """A field of the first CPU in ``/proc/cpuinfo`` text (every core of a machine has the same)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()
    return ""


def cpu_flags(cpuinfo_text: str) -> set[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16``, ...) from ``/proc/cpuinfo`` text."""
    return set(_cpuinfo_field(cpuinfo_text, "flags").split())


def cpu_has_amx_bf16(flags: set[str]) -> bool:
    """Whether the CPU has AMX tiles with bfloat16 (Sapphire Rapids and later Xeons) and the kernel lets
    programs use them: Linux lists the flags only then, and some hypervisors hide them."""
    return {"amx_tile", "amx_bf16"} <= flags


def cpu_bfloat16_pays(cpuinfo_text: str) -> tuple[bool, str]:
    """Whether a mixed_bfloat16 training step beats float32 on this CPU, and what the CPU has (for the log).

    With TensorFlow 2.21's oneDNN kernels (docs/speed.md, "Training speed"): yes with AMX (the issue's figures:
    bfloat16 matmuls and 3x3 convolutions 2.2-2.6x float32); yes on AMD CPUs with AVX512_BF16 (Zen 4, no
    AMX: on the 2-core AMD EPYC of bench/results/models_precision.json, whose flags were not recorded,
    unet-small trained 1.37x and segnet 1.46x faster); no on an Intel Xeon with AVX512_BF16 but no AMX
    (0.4-0.65x float32: every convolution and its gradients slower, plus the casts), nor without
    AVX512_BF16 at all.
    """
    flags = cpu_flags(cpuinfo_text)
    if cpu_has_amx_bf16(flags):
        return True, "AMX"
    if "avx512_bf16" in flags:
        if _cpuinfo_field(cpuinfo_text, "vendor_id") == "AuthenticAMD":
            return True, "AVX512_BF16 (AMD)"
        return False, "AVX512_BF16 but no AMX"
    return False, "neither AMX nor AVX512_BF16"


def forced_cpu_bfloat16() -> bool | None:
    """``KSEG_CPU_BFLOAT16``: True for ``1``/``true``/``yes``, False for ``0``/``false``/``no``, None if unset."""
    value = os.environ.get(CPU_BFLOAT16_ENV, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{CPU_BFLOAT16_ENV}={value!r}: expected 1 (force bfloat16 on CPU) or 0 (force float32)")


def accelerator_kind() -> str:
    """``"tpu"``, ``"gpu"`` or ``"cpu"``: what the model will run on. TPUs appear once the TPU strategy has
    connected to them, which kseg does before it chooses the precision."""
    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def cpu_precision_policy(cpuinfo_text: str, force_bfloat16: bool | None = None) -> str:
    """Mixed precision on a CPU: ``mixed_bfloat16`` where it pays (:func:`cpu_bfloat16_pays`), else
    ``float32``, logging why. ``force_bfloat16`` True or False overrides the CPU check (benchmarks)."""
    if force_bfloat16 is not None:
        return "mixed_bfloat16" if force_bfloat16 else "float32"
    pays, has = cpu_bfloat16_pays(cpuinfo_text)
    if pays:
        return "mixed_bfloat16"
    log.info(
        f"mixed precision: float32 on this CPU, which has {has}: there bfloat16 trains slower than "
        f'float32 (docs/speed.md, "Training speed"); set {CPU_BFLOAT16_ENV}=1 to use bfloat16 anyway'
    )
    return "float32"


def precision_policy(
    enabled: bool, device: str | None = None, cpuinfo_text: str | None = None, cpu_bfloat16: bool | None = None
) -> str:
    """The Keras policy for ``--mixed-precision``: ``mixed_float16`` on GPUs, ``mixed_bfloat16`` on TPUs
    (no loss scaling needed), on CPUs ``mixed_bfloat16`` only where it is faster than float32 (AMX, or AMD
    with AVX512_BF16: :func:`cpu_bfloat16_pays`), and ``float32`` when mixed precision is off.

    ``device`` (``"cpu"``, ``"gpu"``, ``"tpu"``; default: detected), ``cpuinfo_text`` (default: this
    machine's ``/proc/cpuinfo``) and ``cpu_bfloat16`` (default: ``$KSEG_CPU_BFLOAT16``; True or False forces
    bfloat16 or float32 on CPU) exist for tests and benchmarks.
    """
    if not enabled:
        return "float32"
    device = device or accelerator_kind()
    if device == "gpu":
        return "mixed_float16"
    if device == "tpu":
        return "mixed_bfloat16"
    if device != "cpu":
        raise ValueError(f"device: expected 'cpu', 'gpu' or 'tpu', got {device!r}")
    force = cpu_bfloat16 if cpu_bfloat16 is not None else forced_cpu_bfloat16()
    if force is not None:
        return cpu_precision_policy("", force)
    return cpu_precision_policy(read_cpuinfo() if cpuinfo_text is None else cpuinfo_text)
