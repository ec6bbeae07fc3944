"""tfds_ph2: PH2 dermoscopy lesions, MADS full-body people, Penn-Fudan pedestrians, LSPET body keypoints, and a
synthetic lesion set.

``tfds build tfds_ph2 --imports tfds_ph2 --config ph2 --manual_dir /path/to/PH2Dataset`` builds PH2 from any
folder (from the repository root ``--imports tfds_ph2`` may be left out); ``--config mads`` builds MADS;
``--config synthetic`` needs no download. Reading and checking the files lives in ``ph2_source``,
``mads_source``, ``pennfudan_source`` and ``lspet_source`` so that this module only declares features and splits.

Importing this module makes a build error (``DatasetError``, or segio's ``ImageReadError``) end with one line
``tfds_ph2: error: <message>`` on stderr under the ``tfds`` command (``common.install_error_line_hook``).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfds_ph2 import common, lspet_source, mads_source, pennfudan_source, ph2_source, synthetic

_SYNTHETIC_SEED = 0
_SPLITS = ("train", "validation", "test")

logger = logging.getLogger("tfds_ph2")

common.install_error_line_hook()


def _mask_feature(labels) -> tfds.features.LabeledImage:
    return tfds.features.LabeledImage(
        labels=list(labels),
        shape=(None, None, 1),
        encoding_format="png",
        doc="Per-pixel class ids (0 = background), the same height and width as `image`.",
    )


def _ph2_features() -> tfds.features.FeaturesDict:
    criterion = lambda doc: tfds.features.ClassLabel(names=list(ph2_source.CRITERION_VALUES), doc=doc)
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png", doc="Dermoscopic image."),
            "segmentation_mask": _mask_feature(ph2_source.MASK_LABELS),
            "image_id": tfds.features.Text(doc="PH2 case name, e.g. IMD003."),
            "clinical_diagnosis": tfds.features.ClassLabel(names=list(ph2_source.CLINICAL_DIAGNOSES)),
            "histological_diagnosis": tfds.features.Text(doc="Histological diagnosis; empty for most cases."),
            "asymmetry": tfds.features.ClassLabel(names=list(ph2_source.ASYMMETRY)),
            "pigment_network": criterion("Pigment network."),
            "dots_globules": criterion("Dots/globules."),
            "streaks": criterion("Streaks."),
            "regression_areas": criterion("Regression areas."),
            "blue_whitish_veil": criterion("Blue-whitish veil."),
            "colors": tfds.features.Tensor(
                shape=(len(ph2_source.COLORS),),
                dtype=np.bool_,
                doc="Multi-hot colours present, in the order " + ", ".join(ph2_source.COLORS) + ".",
            ),
        }
    )


def _pennfudan_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png", doc="Street photo."),
            "instance_mask": tfds.features.Image(
                shape=(None, None, 1),
                dtype=np.uint8,
                encoding_format="png",
                doc="Instance label image: 0 background, k = pedestrian k (the `id` of `objects`), the same "
                "height and width as `image`.",
            ),
            "objects": tfds.features.Sequence(
                {
                    "bbox": tfds.features.BBoxFeature(
                        doc="The box file's box, normalized [ymin, xmin, ymax, xmax] (pixel edges)."
                    ),
                    "area": tfds.features.Scalar(np.int64, doc="Pixels of value `id` in `instance_mask`."),
                    "id": tfds.features.Scalar(np.int64, doc="The pedestrian's value in `instance_mask` (1..n)."),
                }
            ),
            "source": tfds.features.ClassLabel(names=list(pennfudan_source.SOURCES), doc="FudanPed or PennPed."),
            "image_id": tfds.features.Text(doc="File stem, e.g. FudanPed00001."),
        }
    )


def _lspet_features() -> tfds.features.FeaturesDict:
    joints = ", ".join(lspet_source.JOINT_NAMES)
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 3),
                encoding_format="jpeg",
                doc="Sports photo, the release's JPEG bytes unchanged (the person about 150 pixels tall).",
            ),
            "keypoints": tfds.features.Tensor(
                shape=(len(lspet_source.JOINT_NAMES), 2),
                dtype=np.float32,
                doc=f"(x, y) in pixels of `image` (x to the right, y down, as joints.mat gives them; may lie "
                f"outside the image), one row per joint in LSP order: {joints}.",
            ),
            "visibility": tfds.features.Tensor(
                shape=(len(lspet_source.JOINT_NAMES),),
                dtype=np.bool_,
                doc=f"True where joints.mat flags the joint visible (1); False where it flags 0 (occluded or not "
                f"placed: most such joints sit at a negative coordinate); order: {joints}.",
            ),
            "image_id": tfds.features.Text(doc="File stem, e.g. im00001 (column 1 of joints.mat)."),
        }
    )


#: The supervised target of the configs whose target is not ``segmentation_mask``.
#: What kseg reads from a config's metadata: the feature it reports scores per value of by default
#: (``kseg.evaluate --group-by auto``), and a keypoint dataset's joint names in the order of its rows.
_METADATA = {
    "ph2": tfds.core.MetadataDict(group_by="clinical_diagnosis"),
    "lspet": tfds.core.MetadataDict(joint_names=list(lspet_source.JOINT_NAMES)),
}
_SUPERVISED_TARGET = {"pennfudan": "instance_mask", "lspet": "keypoints"}


def _plain_features(mask_labels, image_doc: str, id_doc: str) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png", doc=image_doc),
            "segmentation_mask": _mask_feature(mask_labels),
            "image_id": tfds.features.Text(doc=id_doc),
        }
    )


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for PH2, MADS, Penn-Fudan, LSPET and synthetic dermoscopy-like images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: ph2, mads and synthetic configs."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="ph2", description="PH2: 200 dermoscopic images with lesion masks (manual download)."
        ),
        tfds.core.BuilderConfig(
            name="mads", description="Segmentation Full Body MADS: people with body masks (manual download)."
        ),
        tfds.core.BuilderConfig(
            name="pennfudan",
            description="Penn-Fudan pedestrians: 170 street photos, one mask and box per person (manual download).",
        ),
        tfds.core.BuilderConfig(
            name="lspet",
            description="Leeds Sports Pose Extended: sports photos with 14 body joints (x, y, visible) each "
            "(manual download).",
        ),
        tfds.core.BuilderConfig(
            name="synthetic", description="Procedural dermoscopy-like images with exact masks (no download)."
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "ph2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Only the `ph2`, `mads`, `pennfudan` and `lspet` configs need files; `synthetic` is generated.\n\n"
        + ph2_source.INSTRUCTIONS
        + "\n\n"
        + mads_source.INSTRUCTIONS
        + "\n\n"
        + pennfudan_source.INSTRUCTIONS
        + "\n\n"
        + lspet_source.INSTRUCTIONS
    )

    def _info(self) -> tfds.core.DatasetInfo:
        name = self.builder_config.name
        if name == "ph2":
            features = _ph2_features()
            homepage = "https://www.fc.up.pt/addi/ph2%20database.html"
        elif name == "mads":
            features = _plain_features(("background", "person"), "Photo of a person.", "File stem of the frame.")
            homepage = "https://www.kaggle.com/datasets/tapakah68/segmentation-full-body-mads-dataset"
        elif name == "pennfudan":
            features = _pennfudan_features()
            homepage = "https://www.cis.upenn.edu/~jshi/ped_html/"
        elif name == "lspet":
            features = _lspet_features()
            homepage = "http://sam.johnson.io/research/lspet.html"
        else:
            features = _plain_features(("background", "lesion"), "Synthetic dermoscopy-like image.", "SYNxxxx.")
            homepage = "https://github.com/kseg/kseg"
        return self.dataset_info_from_configs(
            features=features,
            supervised_keys=("image", _SUPERVISED_TARGET.get(name, "segmentation_mask")),
            homepage=homepage,
            # The feature evaluation reports per-group scores for by default (kseg.evaluate --group-by auto).
            metadata=_METADATA.get(name),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        name = self.builder_config.name
        if name == "synthetic":
            return {
                split: self._generate_examples(synthetic.generate_split(split, seed=_SYNTHETIC_SEED), split)
                for split in synthetic.SPLITS
            }
        if name == "ph2":
            root, cases, split_of_case = ph2_source.read_cases(_manual_dir(dl_manager, ph2_source.INSTRUCTIONS))
            load = functools.partial(ph2_source.load_example, root)
            by_split = {s: [c for c in cases.values() if split_of_case[c.image_id] == s] for s in _SPLITS}
            return {s: self._generate_examples(((c.image_id, load(c)) for c in by_split[s]), s) for s in _SPLITS}
        if name == "pennfudan":
            root, by_split = pennfudan_source.read_cases(_manual_dir(dl_manager, pennfudan_source.INSTRUCTIONS))
            load = functools.partial(pennfudan_source.load_example, root)
            return {s: self._generate_examples(((c.image_id, load(c)) for c in by_split[s]), s) for s in _SPLITS}
        if name == "lspet":
            root, by_split = lspet_source.read_cases(_manual_dir(dl_manager, lspet_source.INSTRUCTIONS))
            load = functools.partial(lspet_source.load_example, root)
            return {s: self._generate_examples(((c.image_id, load(c)) for c in by_split[s]), s) for s in _SPLITS}
        root = mads_source.find_root(_manual_dir(dl_manager, mads_source.INSTRUCTIONS))
        by_split = mads_source.pairs_by_split(root, mads_source.pair_files(root))
        return {
            s: self._generate_examples(
                ((stem, mads_source.load_example(stem, *files)) for stem, files in by_split[s]), s
            )
            for s in _SPLITS
        }

    def _generate_examples(self, keyed_examples, split: str = ""):
        """Yields ``(key, example)``; ``keyed_examples`` is a lazy generator, so every file is decoded only
        when TFDS writes it and a bad file stops the build with its own error. A split whose masks are all
        empty is built, with a warning at its end (masks that a reader took for empty once looked so); examples
        without a mask (``lspet``'s keypoints) are not counted."""
        count = empty = 0
        for key, example in keyed_examples:
            mask = next((example[k] for k in ("instance_mask", "segmentation_mask") if k in example), None)
            if mask is not None:
                count += 1
                empty += not np.any(mask)
            yield key, example
        if count and empty == count:
            logger.warning(
                "tfds_ph2/%s split %s: all %d masks are empty (no foreground pixel); "
                "check the mask files of the download",
                self.builder_config.name,
                split,
                count,
            )
        elif empty:
            logger.info("tfds_ph2/%s split %s: %d of %d masks are empty", self.builder_config.name, split, empty, count)


def _manual_dir(dl_manager: tfds.download.DownloadManager, instructions: str) -> epath.Path:
    """The manual dir; a missing or empty one is a ``DatasetError`` naming it with the config's own
    instructions (TFDS's check is an AssertionError that prints every config's)."""
    try:
        return dl_manager.manual_dir
    except AssertionError:
        path = getattr(dl_manager, "_manual_dir", None)
        if path is None:
            raise
        common.require_dir(epath.Path(path), "The manual download folder", instructions)
        raise
