"""The files an instance prediction is written as (``kseg.tasks.instance_files``): the same from
``kseg.predict`` and ``kseg.client``, so these are checked once here on made-up results."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
from PIL import Image

from kseg.core.serving_contract import MAX_INSTANCES
from kseg.tasks import instance_files
from kseg.tasks.instance_files import InstanceResult


def _result(labels: np.ndarray) -> InstanceResult:
    count = int(labels.max())
    ids = np.arange(1, count + 1)
    areas = np.array([np.sum(labels == i) for i in ids], dtype=np.int32)
    boxes = np.zeros((count, 4), np.float32)
    for row, i in enumerate(ids):
        ys, xs = np.nonzero(labels == i)
        boxes[row] = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    return InstanceResult(labels, np.linspace(0.9, 0.5, count, dtype=np.float32), boxes, areas)


def test_label_png_is_8_bit_up_to_255_people_and_16_bit_above():
    few = np.zeros((4, 300), np.int32)
    few[1, :255] = np.arange(1, 256)
    many = few.copy()
    many[2, :45] = np.arange(256, 301)
    for labels, mode in ((few, "L"), (many, "I;16")):
        data = instance_files.label_png(labels)
        assert Image.open(io.BytesIO(data)).mode == mode
        np.testing.assert_array_equal(instance_files.read_label_png(data), labels)


def test_files_hold_each_persons_id_score_box_and_area():
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 3:9] = 1
    labels[10:18, 20:25] = 2
    image = np.full((20, 30, 3), 100, np.uint8)
    written = instance_files.prediction_files(image, _result(labels), "street.jpg")
    assert set(written) == {"_instances.png", "_overlay.png", "_instances.json"}
    document = json.loads(written["_instances.json"])
    assert document["image"] == "street.jpg" and (document["height"], document["width"]) == (20, 30)
    assert [p["id"] for p in document["people"]] == [1, 2] and document["count"] == 2
    assert document["people"][1]["box"] == {"ymin": 10.0, "xmin": 20.0, "ymax": 18.0, "xmax": 25.0}
    assert [p["area"] for p in document["people"]] == [36, 40]
    overlay = np.asarray(Image.open(io.BytesIO(written["_overlay.png"])))
    # Each person is tinted in their own colour; the background is left as it was.
    assert not np.array_equal(overlay[4, 5], overlay[14, 22])
    np.testing.assert_array_equal(overlay[0, 29], image[0, 29])


def test_an_image_with_the_most_people_a_model_returns_is_named_in_a_warning(caplog):
    labels = np.arange(MAX_INSTANCES, dtype=np.int32).reshape(10, -1) + 1
    with caplog.at_level(logging.WARNING, logger="kseg"):
        instance_files.prediction_files(np.zeros((*labels.shape, 3), np.uint8), _result(labels), "crowd.png")
    assert "crowd.png: 100 people" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kseg"):
        instance_files.prediction_files(np.zeros((*labels.shape, 3), np.uint8), _result(labels % 7), "few.png")
    assert not caplog.text


def test_an_image_with_no_people_is_an_empty_prediction():
    labels = np.zeros((6, 8), np.int32)
    result = InstanceResult(labels, np.zeros(0, np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    written = instance_files.prediction_files(np.zeros((6, 8, 3), np.uint8), result, "empty.png")
    assert json.loads(written["_instances.json"])["people"] == []
    assert not instance_files.read_label_png(written["_instances.png"]).any()
