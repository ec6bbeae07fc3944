"""Running a segmentation model on images of any size and bringing its output back to each image's size.

Training, evaluation and prediction all go through here, so a mask is produced the same way everywhere:
resize the image to the model's input size exactly as the training pipeline does, predict, resize the
*probabilities* (bilinear) back to the original size, then threshold (binary) or take the argmax.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import zipfile
from collections.abc import Callable

import tensorflow as tf

from kseg import tasks
from kseg.core import outputs, serving_contract
from kseg.core.errors import UsageError
from kseg.data.preprocessing import model_input
from kseg.prediction import model_trust
from kseg.prediction.model_trust import (
    ModelLoadError,  # still kseg.prediction.inference.ModelLoadError; refusals subclass it
)
from kseg.tasks import postprocess


def model_image_size(model) -> tuple[int, int]:
    """The (height, width) a model was built for, read from its ``image`` input."""
    shape = model.inputs[0].shape if hasattr(model, "inputs") and model.inputs else None
    if shape is None or shape[1] is None or shape[2] is None:
        raise ModelLoadError("the model has no fixed input size; build it with image_size=(H, W)")
    return int(shape[1]), int(shape[2])


# ------------------------------------------------------------------------------------ loading models ---


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A trained model from any of the places kseg stores one, with the post-processing chosen for it."""

    path: str
    image_size: tuple[int, int]
    num_classes: int
    postprocessing: postprocess.PostProcessing
    model_probabilities_fn: Callable  # float32 [N, H, W, 3] in [0, 1] -> probabilities [N, H, W, C]
    keras_model: object = None  # the Keras model when loaded from .keras (None for a SavedModel)
    task: str = "semantic"  # kseg.tasks: what it predicts

    def prediction_files(self, image, mask, source: str = "") -> dict[str, bytes]:
        """The files ``kseg.predict`` writes for one image: the mask and its overlay."""
        return outputs.semantic_files(image, mask, self.num_classes == 1, source)

    def model_probabilities(self, batch, tta: bool | None = None):
        """Probabilities at the model size for a model-size batch; ``tta`` defaults to the stored choice."""
        tta = self.postprocessing.tta if tta is None else tta
        batch = tf.convert_to_tensor(batch, tf.float32)
        if tta:
            return postprocess.tta_probabilities(self.model_probabilities_fn, batch)
        return self.model_probabilities_fn(batch)

    def predict(self, images, batch_size: int = 8, postprocessing: postprocess.PostProcessing | None = None):
        """uint8 masks ``[h, w]`` at each image's own size (class ids or {0, 1}), post-processed."""
        postprocessing = postprocessing or self.postprocessing
        masks = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            probs = self.model_probabilities(model_input(chunk, self.image_size), tta=postprocessing.tta)
            for image, prob in zip(chunk, probs):
                masks.append(postprocess.final_mask(prob, image.shape[:2], postprocessing).numpy())
        return masks


def load_keras_model(path: pathlib.Path):
    """A ``.keras`` model, loaded safely (no Python code) and without its compile settings."""
    import keras

    import kseg.models  # noqa: F401  (registers kseg's layers for deserialization)

    path = pathlib.Path(path)

    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path}: not a .keras archive (a .keras file is a zip archive); the file is "
            f"truncated or corrupt, or is another format. Use a run's best.keras or re-save it "
            f"with model.save('model.keras')"
        )
    try:  # compile=False: inference needs no loss or metrics (and so no kseg.tasks.losses import)
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many types for a bad archive
        raise _keras_load_error(path, e) from None
    return model


def _keras_predictor(path: pathlib.Path):
    model = load_keras_model(path)
    task = tasks.of_model(model)
    if task.name != tasks.SEMANTIC:  # a task with its own predictor (kseg.tasks)
        return task.predictor(model, path, postprocess.for_model(path))
    return predictor_for_model(model, path, postprocess.for_model(path))


def _keras_load_error(path, error: Exception) -> ModelLoadError:
    """One line for a ``.keras`` file Keras would not load. Safe mode refuses Python code in the file (a
    ``Lambda`` layer's bytecode): say so, instead of passing on Keras' advice to turn safe mode off."""
    message = " ".join(str(error).split())
    if "safe_mode" in message:
        first_sentence = message.split(". ")[0]
        return model_trust.ModelRefusedError(
            f"{path}: refused: it holds Python code, which Keras' safe mode does not load ({first_sentence}); "
            f"kseg models never hold Python code. A model file is a program: load only models from people "
            f"you trust"
        )
    return ModelLoadError(f"{path}: cannot load as a Keras model ({type(error).__name__}: {message})")


def predictor_for_model(
    model, path="<in memory>", postprocessing: postprocess.PostProcessing | None = None
) -> Predictor:
    """A ``Predictor`` for a Keras model already in memory (training scores its best model this way)."""

    @tf.function(reduce_retracing=True)
    def model_probabilities(batch):
        return postprocess.probabilities_from_logits(model(batch, training=False))

    return Predictor(
        str(path),
        model_image_size(model),
        int(model.outputs[0].shape[-1]),
        postprocessing or postprocess.PostProcessing(),
        model_probabilities,
        keras_model=model,
    )


def _saved_model_task(path: pathlib.Path) -> str:
    """The task an export was made for, from its ``kseg.json`` (exports older than the task field: semantic)."""
    try:
        metadata = json.loads((path / serving_contract.KSEG_FILE).read_text())
    except (OSError, ValueError):
        return tasks.SEMANTIC
    return metadata.get("task", tasks.SEMANTIC) if isinstance(metadata, dict) else tasks.SEMANTIC


def _saved_model_predictor(path: pathlib.Path):
    """A kseg export, checked before TensorFlow runs anything from it (``kseg.prediction.model_trust``)."""
    loaded = model_trust.load_saved_model(path)
    if _saved_model_task(path) == tasks.INSTANCES:
        return InstanceSavedModelPredictor(path, loaded)
    if _saved_model_task(path) == tasks.KEYPOINTS:
        return KeypointSavedModelPredictor(path, loaded)
    name = serving_contract.PROBABILITIES_SIGNATURE
    if name not in loaded.signatures:
        raise ModelLoadError(
            f"{path}: the SavedModel has no {name!r} signature (it has "
            f"{sorted(loaded.signatures)}); export it with python -m kseg.export"
        )
    signature = loaded.signatures[name]
    ((input_name, spec),) = signature.structured_input_signature[1].items()
    output_spec = signature.structured_outputs[serving_contract.PROBABILITIES_OUTPUT]

    def model_probabilities(batch):
        outputs = signature(**{input_name: tf.convert_to_tensor(batch, tf.float32)})
        return outputs[serving_contract.PROBABILITIES_OUTPUT]

    return Predictor(
        str(path),
        (int(spec.shape[1]), int(spec.shape[2])),
        int(output_spec.shape[-1]),
        postprocess.for_model(path),
        model_probabilities,
    )


class _ServingSignaturePredictor:
    """An exported model run through its ``serving_default`` (the graph TF Serving runs), each image sent as
    lossless PNG bytes; what comes back is the task's (``_results``). Its TTA is fixed in the graph."""

    keras_model = None

    def __init__(self, path: pathlib.Path, loaded):
        self.path = str(path)
        name = serving_contract.SERVING_SIGNATURE
        if name not in loaded.signatures:
            raise ModelLoadError(
                f"{path}: the SavedModel has no {name!r} signature; export it with python -m kseg.export"
            )
        self._signature = loaded.signatures[name]
        self.metadata = json.loads((path / serving_contract.KSEG_FILE).read_text())
        self.image_size = tuple(self.metadata["image_size"])
        self.postprocessing = postprocess.for_model(path)  # what the graph does (flip TTA or not)

    def predict(self, images, batch_size: int = 8, postprocessing=None):
        if postprocessing is not None and postprocessing.tta != self.postprocessing.tta:
            raise UsageError(
                f"--tta: {self.path} is an export with flip TTA {'on' if self.postprocessing.tta else 'off'} in its "
                f"graph; give its run directory (or .keras file) to choose"
            )
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            encoded = tf.stack([tf.io.encode_png(tf.convert_to_tensor(image, tf.uint8)) for image in chunk])
            response = self._signature(**{serving_contract.IMAGE_BYTES: encoded})
            results.extend(self._result(response, i, image) for i, image in enumerate(chunk))
        return results


class InstanceSavedModelPredictor(_ServingSignaturePredictor):
    """An exported instance model: each image comes back as a label image with scores, boxes and areas."""

    task = tasks.INSTANCES
    num_classes = 1

    @staticmethod
    def _result(response, i: int, image):
        from kseg.tasks.instance_files import InstanceResult, read_label_png

        count = int(response["count"][i])
        return InstanceResult(
            labels=read_label_png(response["label_bytes"][i].numpy()),
            scores=response["scores"][i, :count].numpy(),
            boxes=response["boxes"][i, :count].numpy(),
            areas=response["areas"][i, :count].numpy(),
        )

    def prediction_files(self, image, result, source: str = "") -> dict[str, bytes]:
        from kseg.tasks.instance_files import prediction_files

        return prediction_files(image, result, source)


class KeypointSavedModelPredictor(_ServingSignaturePredictor):
    """An exported keypoint model (trained or ready-made): each image comes back as people's joints."""

    task = tasks.KEYPOINTS

    def __init__(self, path: pathlib.Path, loaded):
        super().__init__(path, loaded)
        self.joint_names = tuple(self.metadata["joint_names"])
        self.num_classes = len(self.joint_names)

    def _result(self, response, i: int, image):
        from kseg.tasks.keypoint_files import KeypointResult

        count = int(response["count"][i])
        keypoints, scores = response["keypoints"][i, :count].numpy(), response["scores"][i, :count].numpy()
        return KeypointResult(keypoints, scores, self.joint_names, tuple(image.shape[:2]))

    def prediction_files(self, image, result, source: str = "") -> dict[str, bytes]:
        from kseg.tasks.keypoint_files import prediction_files

        return prediction_files(image, result, source)


def load_predictor(path) -> Predictor:
    """A ``.keras`` file, a training run directory (its ``best.keras``), an exported SavedModel version
    directory, or a folder of numbered versions (the newest); or ``pretrained:NAME``, a ready-made pose
    model (``kseg.prediction.pretrained``)."""
    from kseg.prediction import pretrained

    if pretrained.is_pretrained(path):
        return pretrained.load(path)
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelLoadError(
            f"{path}: no such file or directory; expected a .keras file, a run directory or an exported SavedModel"
        )
    if path.is_file():
        if path.suffix != ".keras":
            raise ModelLoadError(f"{path}: expected a .keras file, a run directory or a SavedModel directory")
        return _keras_predictor(path)
    if (path / "best.keras").exists():
        return _keras_predictor(path / "best.keras")
    saved_model = serving_contract.resolve_saved_model(path)
    if saved_model is not None:
        return _saved_model_predictor(saved_model)
    raise ModelLoadError(
        f"{path}: found neither best.keras (a run directory), saved_model.pb (an exported "
        f"version) nor numbered version folders"
    )
