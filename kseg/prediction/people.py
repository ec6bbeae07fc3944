"""Masks and skeletons together: a keypoint model and an instance model on the same images
(``kseg.predict --model KEYPOINTS --instances INSTANCES``).

Each model writes its own files, and one more picture shows both: ``NAME_people.png``, each person's mask
tinted in their colour with the skeletons drawn on top. A skeleton takes the colour of the mask that holds
most of its joints, so a person's mask and skeleton match; a skeleton on no mask is drawn in white.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kseg.core.outputs import encode_png
from kseg.tasks import instance_files, keypoint_files

PEOPLE_SUFFIX = "_people.png"


@dataclasses.dataclass
class PeopleResult:
    keypoints: keypoint_files.KeypointResult
    instances: instance_files.InstanceResult


def skeleton_colours(keypoints: np.ndarray, labels: np.ndarray) -> list:
    """For each person's joints ``[P, J, 3]``, the colour of the instance holding most of its scored joints."""
    palette = instance_files.colours(max(int(labels.max(initial=0)), 1))
    height, width = labels.shape
    found = []
    for person in keypoints:
        scored = person[person[:, 2] >= keypoint_files.DRAW_THRESHOLD]
        xs = np.clip(np.round(scored[:, 0]).astype(int), 0, width - 1)
        ys = np.clip(np.round(scored[:, 1]).astype(int), 0, height - 1)
        ids = labels[ys, xs]
        ids = ids[ids > 0]
        found.append(tuple(int(v) for v in palette[np.bincount(ids).argmax() - 1]) if ids.size else (255, 255, 255))
    return found


def people_picture(image, result: PeopleResult) -> np.ndarray:
    picture = instance_files.overlay(image, result.instances.labels)
    points = result.keypoints
    for person, colour in zip(points.keypoints, skeleton_colours(points.keypoints, result.instances.labels)):
        picture = keypoint_files.draw_skeletons(picture, person[None], points.joint_names, colour=colour)
    return picture


class PeoplePredictor:
    """A keypoint predictor and an instance predictor as one: ``predict`` runs both on each image."""

    task = "keypoints"

    def __init__(self, keypoint_predictor, instance_predictor):
        self.keypoints, self.instances = keypoint_predictor, instance_predictor
        self.path = keypoint_predictor.path
        self.postprocessing = keypoint_predictor.postprocessing

    def predict(self, images, batch_size: int = 8, postprocessing=None) -> list[PeopleResult]:
        skeletons = self.keypoints.predict(images, batch_size=batch_size, postprocessing=postprocessing)
        masks = self.instances.predict(images, batch_size=batch_size)
        return [PeopleResult(k, m) for k, m in zip(skeletons, masks)]

    def prediction_files(self, image, result: PeopleResult, source: str = "") -> dict[str, bytes]:
        of = f" of {source}" if source else ""
        return {
            **self.keypoints.prediction_files(image, result.keypoints, source),
            **self.instances.prediction_files(image, result.instances, source),
            PEOPLE_SUFFIX: encode_png(people_picture(image, result), f"kseg people (masks and skeletons){of}"),
        }
