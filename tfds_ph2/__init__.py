"""TFDS builder for PH2 (dermoscopy lesions), MADS (full-body people) and a synthetic set.

``tfds build tfds_ph2 --config ph2 --manual_dir ...`` loads ``tfds_ph2_dataset_builder.Builder``;
importing this package registers the builder as ``tfds_ph2`` so that ``tfds.load("tfds_ph2/ph2")`` works.
"""
