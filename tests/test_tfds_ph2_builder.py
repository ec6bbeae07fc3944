"""TFDS's own builder test harness on the committed dummy data, one test case per config."""

import tensorflow_datasets as tfds

from tfds_ph2 import tfds_ph2_dataset_builder


class Ph2BuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["ph2"]
    SPLITS = {"train": 9, "validation": 3, "test": 3}
    SKIP_CHECKSUMS = True


class MadsBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["mads"]
    SPLITS = {"train": 3, "validation": 4, "test": 2}
    SKIP_CHECKSUMS = True


class SyntheticBuilderTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = tfds_ph2_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["synthetic"]
    SPLITS = {"train": 200, "validation": 50, "test": 50}
    SKIP_CHECKSUMS = True
