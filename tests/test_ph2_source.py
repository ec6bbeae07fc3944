"""PH2 reading: the real download's quirks and every kind of bad input, each with an error naming it."""

import collections
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from segio.images import ImageReadError
from tfds_ph2 import ph2_source
from tfds_ph2.common import DatasetError


def _metadata(root):
    return root / "PH2_dataset.txt"


def _replace_in_metadata(root, old, new):
    path = _metadata(root)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_real_ph2_cases_and_split(ph2_dir):
    root, cases, splits = ph2_source.read_cases(ph2_dir)
    assert len(cases) == 200
    assert collections.Counter(c.clinical_diagnosis for c in cases.values()) == {
        "common_nevus": 80,
        "atypical_nevus": 80,
        "melanoma": 40,
    }
    counts = collections.Counter((splits[i], cases[i].clinical_diagnosis) for i in cases)
    assert counts == {
        ("train", "common_nevus"): 56,
        ("train", "atypical_nevus"): 56,
        ("train", "melanoma"): 28,
        ("validation", "common_nevus"): 8,
        ("validation", "atypical_nevus"): 8,
        ("validation", "melanoma"): 4,
        ("test", "common_nevus"): 16,
        ("test", "atypical_nevus"): 16,
        ("test", "melanoma"): 8,
    }
    imd003 = cases["IMD003"]
    assert (imd003.asymmetry, imd003.criteria["pigment_network"], imd003.colors) == (
        "fully_symmetric",
        "typical",
        (False, False, False, True, False, False),
    )
    assert cases["IMD435"].histological_diagnosis == "Lentigo Maligna"


def test_split_does_not_depend_on_row_order(ph2_dir):
    cases = ph2_source.parse_metadata(ph2_dir / "PH2_dataset.txt")
    reordered = dict(reversed(list(cases.items())))
    assert ph2_source.assign_splits(cases) == ph2_source.assign_splits(reordered)


@pytest.mark.parametrize("case_id", ["IMD002", "IMD004"])  # 24-bit top-down mask; 1-bit half-size mask
def test_real_masks_decode_to_binary_at_image_size(ph2_dir, case_id):
    cases = ph2_source.parse_metadata(ph2_dir / "PH2_dataset.txt")
    example = ph2_source.load_example(ph2_dir, cases[case_id])
    mask = example["segmentation_mask"]
    assert mask.shape == example["image"].shape[:2] + (1,)
    assert set(np.unique(mask)) == {0, 1}
    # The lesion is darker than the surrounding skin: a flipped (bottom-up) mask would not be.
    grey = example["image"].mean(axis=-1)
    assert grey[mask[..., 0] == 1].mean() < grey[mask[..., 0] == 0].mean() - 30


@pytest.mark.parametrize("relative", ["", "..", "nested"])
def test_manual_dir_may_be_the_folder_its_parent_or_the_extraction_folder(dummy_ph2, tmp_path, relative):
    if relative == "nested":
        extraction = tmp_path / "extracted"
        shutil.move(str(dummy_ph2), str(extraction / "PH2Dataset"))
        manual_dir = extraction.parent
        expected = extraction / "PH2Dataset"
    else:
        manual_dir = dummy_ph2 / relative if relative else dummy_ph2
        expected = dummy_ph2
    assert ph2_source.find_root(manual_dir).resolve() == expected.resolve()


def test_missing_manual_dir(tmp_path):
    with pytest.raises(DatasetError, match="(?s)does not exist.*PH2Dataset.rar"):
        ph2_source.find_root(tmp_path / "nowhere")


def test_empty_manual_dir(tmp_path):
    with pytest.raises(DatasetError, match=r"(?s)is empty.*tfds build tfds_ph2 --config ph2"):
        ph2_source.find_root(tmp_path)


def test_unextracted_archive_is_named(tmp_path):
    (tmp_path / "PH2Dataset.rar").write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match=r"PH2Dataset.rar.*extract them first"):
        ph2_source.find_root(tmp_path)


def test_missing_metadata_file(dummy_ph2):
    _metadata(dummy_ph2).unlink()
    with pytest.raises(DatasetError, match="PH2_dataset.txt is missing"):
        ph2_source.find_root(dummy_ph2)


def test_missing_mask_names_the_file(dummy_ph2):
    cases = ph2_source.parse_metadata(_metadata(dummy_ph2))
    _, mask_path = ph2_source.case_files(dummy_ph2, "IMD101")
    mask_path.unlink()
    with pytest.raises(DatasetError, match=r"IMD101_lesion\.bmp: lesion mask of IMD101 is missing"):
        ph2_source.load_example(dummy_ph2, cases["IMD101"])


def test_truncated_image_names_the_file(dummy_ph2):
    cases = ph2_source.parse_metadata(_metadata(dummy_ph2))
    image_path, _ = ph2_source.case_files(dummy_ph2, "IMD102")
    image_path.write_bytes(image_path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"IMD102\.bmp: cannot decode image.*truncated"):
        ph2_source.load_example(dummy_ph2, cases["IMD102"])


def test_unreadable_image_names_the_file(dummy_ph2):
    cases = ph2_source.parse_metadata(_metadata(dummy_ph2))
    image_path, _ = ph2_source.case_files(dummy_ph2, "IMD103")
    image_path.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match=r"IMD103\.bmp: not a recognised image format"):
        ph2_source.load_example(dummy_ph2, cases["IMD103"])


def test_mask_of_another_aspect_names_both_files(dummy_ph2):
    cases = ph2_source.parse_metadata(_metadata(dummy_ph2))
    _, mask_path = ph2_source.case_files(dummy_ph2, "IMD104")  # the image is 24x19
    Image.new("1", (10, 16)).save(mask_path)
    with pytest.raises(
        DatasetError,
        match=r"IMD104_lesion\.bmp is 10x16 but its image .*IMD104\.bmp is 24x19: "
        r"expected the same size, or the same aspect ratio within one pixel",
    ):
        ph2_source.load_example(dummy_ph2, cases["IMD104"])


def test_mask_at_another_scale_is_resized_nearest_like_mads(dummy_ph2):
    cases = ph2_source.parse_metadata(_metadata(dummy_ph2))
    _, mask_path = ph2_source.case_files(dummy_ph2, "IMD108")  # the image is 24x20
    small = np.zeros((10, 12), np.uint8)
    small[2:6, 3:9] = 1
    Image.fromarray(small * 255).convert("1").save(mask_path)
    mask = ph2_source.load_example(dummy_ph2, cases["IMD108"])["segmentation_mask"]
    assert mask.shape == (20, 24, 1)
    np.testing.assert_array_equal(mask[::2, ::2, 0], small)


def test_missing_cases_are_named_by_split_with_the_folder_expected(dummy_ph2):
    for case_id in ("IMD103", "IMD108", "IMD105"):  # two of the three validation cases, one train case
        shutil.rmtree(dummy_ph2 / "PH2 Dataset images" / case_id)
    images = dummy_ph2 / "PH2 Dataset images"
    with pytest.raises(
        DatasetError,
        match=(
            rf"(?s)PH2 copy in .* is incomplete: 1 of the 9 train cases is missing: IMD105; "
            rf"2 of the 3 validation cases are missing: IMD103, IMD108\. "
            rf"Expected a folder per case in {images}, e.g. {images}/IMD105 holding "
            rf"IMD105_Dermoscopic_Image/IMD105\.bmp and IMD105_lesion/IMD105_lesion\.bmp\.$"
        ),
    ):
        ph2_source.read_cases(dummy_ph2)


def _official_stub(ph2_dir, target, drop=()):
    """A copy of the real PH2_dataset.txt without the rows of ``drop``, with an empty folder per remaining case
    (enough for ``read_cases``, which does not open images)."""
    lines = (ph2_dir / "PH2_dataset.txt").read_text().splitlines()
    (target / "PH2 Dataset images").mkdir(parents=True)
    (target / "PH2_dataset.txt").write_text(
        "\n".join(line for line in lines if not any(f"|| {d} " in line for d in drop))
    )
    for case in (ph2_dir / "PH2 Dataset images").iterdir():
        if case.name not in drop:
            (target / "PH2 Dataset images" / case.name).mkdir()
    return target


def test_official_copy_lacking_whole_cases_names_them_instead_of_an_empty_split(ph2_dir, tmp_path):
    validation = ph2_source.OFFICIAL_SPLITS["validation"]
    root = _official_stub(ph2_dir, tmp_path / "PH2Dataset", drop=validation[:3])
    with pytest.raises(
        DatasetError,
        match=(
            rf"incomplete: 3 of the 20 validation cases are missing: {', '.join(validation[:3])}\. Expected a folder "
            rf"per case in .*PH2 Dataset images, e.g. .*/{validation[0]} holding .*; 3 of the missing cases have no "
            rf"row in .*PH2_dataset.txt either"
        ),
    ):
        ph2_source.read_cases(root)
    # A whole split gone: formerly TFDS's "No examples were yielded"; now every missing case is named.
    root = _official_stub(ph2_dir, tmp_path / "other" / "PH2Dataset", drop=validation)
    with pytest.raises(
        DatasetError, match=rf"20 of the 20 validation cases are missing: {validation[0]}, .*and 8 more"
    ):
        ph2_source.read_cases(root)


def test_official_splits_are_those_of_the_real_download(ph2_dir):
    _, cases, splits = ph2_source.read_cases(ph2_dir)
    assert {s: sorted(i for i in cases if splits[i] == s) for s in ph2_source.OFFICIAL_SPLITS} == {
        s: sorted(ids) for s, ids in ph2_source.OFFICIAL_SPLITS.items()
    }


def test_too_few_cases_for_a_split_is_named(dummy_ph2):
    for case in ("IMD103", "IMD108", "IMD114"):  # the validation cases, rows and folders
        _replace_in_metadata(dummy_ph2, f"|| {case} ||", "|| IMD999 ||")
        text = _metadata(dummy_ph2).read_text().splitlines()
        _metadata(dummy_ph2).write_text("\n".join(line for line in text if "IMD999" not in line))
        shutil.rmtree(dummy_ph2 / "PH2 Dataset images" / case)
    with pytest.raises(DatasetError, match=r"PH2_dataset.txt: the validation split would be empty: 12 cases are too"):
        ph2_source.read_cases(dummy_ph2)


def test_script_next_to_case_folders_is_skipped_with_one_warning(dummy_ph2, caplog):
    images = dummy_ph2 / "PH2 Dataset images"
    (images / "convertIms.sh").write_text("#!/bin/sh\nfor f in */*/*.bmp; do convert $f ${f%.bmp}.jpg; done\n")
    (images / "readme.txt").write_text("converted copies")
    with caplog.at_level(logging.WARNING):
        _, cases, _ = ph2_source.read_cases(dummy_ph2)
    assert len(cases) == 15
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0] == f"{images}: skipping 2 file(s) that are not case folders: convertIms.sh, readme.txt"


def test_folder_without_row_stays_an_error_next_to_a_script(dummy_ph2):
    (dummy_ph2 / "PH2 Dataset images" / "convertIms.sh").write_text("#!/bin/sh\n")

    shutil.copytree(dummy_ph2 / "PH2 Dataset images" / "IMD105", dummy_ph2 / "PH2 Dataset images" / "IMD999")
    with pytest.raises(DatasetError, match=r"IMD999 has no row in .*PH2_dataset.txt"):
        ph2_source.read_cases(dummy_ph2)


def test_unknown_diagnosis_code(dummy_ph2):
    _replace_in_metadata(dummy_ph2, "||   0 ||   0 |", "||   7 ||   0 |")
    with pytest.raises(DatasetError, match=r"PH2_dataset.txt, line 2: unknown clinical diagnosis code '7'"):
        ph2_source.read_cases(dummy_ph2)


def test_unknown_criterion_code(dummy_ph2):
    _replace_in_metadata(dummy_ph2, "T | A | A | A | A", "T | X | A | A | A")
    with pytest.raises(DatasetError, match=r"line 2: unknown dots globules code 'X'"):
        ph2_source.read_cases(dummy_ph2)


def test_malformed_row(dummy_ph2):
    _replace_in_metadata(dummy_ph2, "|| IMD101 ||", "|| IMD101 || extra ||")
    with pytest.raises(DatasetError, match=r"line 3: expected 5 '\|\|'-separated fields"):
        ph2_source.read_cases(dummy_ph2)


def test_duplicate_row(dummy_ph2):
    _replace_in_metadata(dummy_ph2, "|| IMD101 ||", "|| IMD100 ||")
    with pytest.raises(DatasetError, match=r"IMD100 is listed twice \(first on line 2\)"):
        ph2_source.read_cases(dummy_ph2)


def test_jpeg_mask_copies_and_roi_folders_are_not_picked(dummy_ph2):
    """Copies in circulation hold ``IMDxxx_lesion.jpg`` beside the BMP; the official database has ``IMDxxx_roi/``."""
    cases = ph2_source.parse_metadata(_metadata(dummy_ph2))
    image_path, mask_path = ph2_source.case_files(dummy_ph2, "IMD106")
    bmp = (np.asarray(Image.open(mask_path).convert("L")) > 127).astype(np.uint8)
    Image.fromarray((1 - bmp) * 255).save(mask_path.with_suffix(".jpg"))  # the opposite mask: must not be used
    Image.fromarray(np.asarray(Image.open(image_path))[::-1]).save(image_path.with_suffix(".jpg"))
    roi = mask_path.parent.parent / "IMD106_roi"
    roi.mkdir()
    Image.fromarray(bmp * 255).save(roi / "IMD106_R1_Label4.bmp")
    example = ph2_source.load_example(dummy_ph2, cases["IMD106"])
    np.testing.assert_array_equal(example["segmentation_mask"][..., 0], bmp)
    np.testing.assert_array_equal(example["image"], np.asarray(Image.open(image_path).convert("RGB")))


def test_build_of_a_copy_with_script_jpeg_masks_and_roi_folders(dummy_ph2, tmp_path):
    import tensorflow_datasets as tfds

    import tfds_ph2  # noqa: F401  (registers the builder)

    images = dummy_ph2 / "PH2 Dataset images"
    (images / "convertIms.sh").write_text("#!/bin/sh\n")
    for case in images.iterdir():
        if case.is_dir():
            (case / f"{case.name}_roi").mkdir()
            mask = case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp"
            Image.open(mask).convert("L").save(mask.with_suffix(".jpg"))
    builder = tfds.builder("tfds_ph2/ph2", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(dummy_ph2)))
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 9, "validation": 3, "test": 3}
