"""Choosing a ``tf.distribute`` strategy and a precision policy from a config.

``auto`` picks mirrored for several GPUs, one device for one GPU and the default strategy on CPU. On a
CPU-only machine ``logical_cpus`` splits the CPU into several logical devices, so that mirrored training
(and its tests) can run without GPUs.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf


def split_cpu(logical_cpus: int) -> None:
    """Expose ``logical_cpus`` logical CPU devices; must run before TensorFlow first touches a device."""
    if logical_cpus <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    except RuntimeError as e:
        raise RuntimeError(f"cannot split the CPU into {logical_cpus} devices after TensorFlow started: {e}") from None


def resolve_name(name: str) -> str:
    if name != "auto":
        return name
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return "mirrored"
    return "one_device" if len(gpus) == 1 else "default"


def make_strategy(name: str, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy called ``name`` (see ``kseg.config.STRATEGIES``)."""
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
            raise ValueError("strategy multiworker needs TF_CONFIG describing the cluster and this worker's task "
                             '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                             '"task": {"type": "worker", "index": 0}})')
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, models and reports (worker 0 or the chief task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0 and
                                              "chief" not in resolver.cluster_spec().as_dict())


def precision_policy(enabled: bool) -> str:
    """``mixed_float16`` on GPUs, ``mixed_bfloat16`` on CPUs and TPUs (no loss scaling needed), else float32."""
    if not enabled:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
