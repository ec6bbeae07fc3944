"""What a model predicts, one object per kind: ``semantic`` (a class per pixel) and ``instances`` (every
person their own mask).

A task says how targets are made from a dataset's masks, which heads go on the decoder, the loss and
metrics, the validation score that chooses the best epoch, how raw outputs become the final prediction (in
TensorFlow ops), how a prediction is scored and drawn, and what the serving signature returns. Training,
evaluation, prediction, export and the client each have one path and ask the task; none branches on the
kind. A dataset declares its kind (``DatasetSpec.kind``); a training preset names it (``TrainConfig.task``).
"""

from __future__ import annotations

from kseg.core.errors import UsageError

SEMANTIC = "semantic"
INSTANCES = "instances"
KEYPOINTS = "keypoints"
NAMES = (SEMANTIC, INSTANCES, KEYPOINTS)


def get(name: str):
    """The task object called ``name``."""
    if name == SEMANTIC:
        from kseg.tasks.semantic import TASK

        return TASK
    if name == INSTANCES:
        from kseg.tasks.instances import TASK

        return TASK
    if name == KEYPOINTS:
        from kseg.tasks.keypoints import TASK

        return TASK
    raise UsageError(f"unknown task {name!r}; kseg's tasks: {', '.join(NAMES)}")


def of_model(model):
    """The task a Keras model was built for, from its outputs (instance and keypoint models return a dict of
    heads, each its own names)."""
    for name in (INSTANCES, KEYPOINTS):
        if get(name).is_model(model):
            return get(name)
    return get(SEMANTIC)


def check_dataset(task_name: str, dataset: str, kind: str, flag: str = "--task") -> None:
    """A dataset of one kind given to a task of another is refused in one line."""
    if task_name != kind:
        hint = {
            INSTANCES: "--preset pennfudan-instances",
            KEYPOINTS: "--preset lspet-keypoints",
        }.get(kind, "a semantic preset such as --preset ph2-unet-lite0")
        what = "keypoints" if kind == KEYPOINTS else f"{kind} masks"
        raise UsageError(
            f"{dataset} holds {what} but the task is {task_name!r}; train it as {kind} ({flag} {kind}, e.g. {hint})"
        )


def check_postprocessing_flags(task_name: str, fields, model) -> None:
    """Post-processing flags that do not apply to the model's kind are refused in one line naming them."""
    task = get(task_name)
    wrong = [name for name in fields if name not in task.postprocessing_fields]
    if wrong:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in wrong)
        takes = ", ".join(f"--{name.replace('_', '-')}" for name in task.postprocessing_fields)
        raise UsageError(f"{flags}: semantic models only; {model} is a {task_name} model (it takes {takes})")
