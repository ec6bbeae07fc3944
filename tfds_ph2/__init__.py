"""TFDS builder for PH2 (dermoscopy lesions), MADS (full-body people) and a synthetic set.

Importing this package registers the builder as ``tfds_ph2``, so that ``tfds.load("tfds_ph2/ph2")`` works and
``tfds build tfds_ph2 --imports tfds_ph2`` builds from any folder once kseg is installed. Run from the
repository root, ``tfds build tfds_ph2 --config ph2 --manual_dir ...`` finds ``tfds_ph2_dataset_builder.Builder``
on its own. The file reading underneath comes from ``segio``; nothing here imports ``kseg``.
"""

from tfds_ph2 import tfds_ph2_dataset_builder  # noqa: F401  (registers the builder)
