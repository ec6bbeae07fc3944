"""PH2 reading: the real download's quirks and every kind of bad input, each with an error naming it."""

import collections
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
        "common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}
    counts = collections.Counter((splits[i], cases[i].clinical_diagnosis) for i in cases)
    assert counts == {
        ("train", "common_nevus"): 56, ("train", "atypical_nevus"): 56, ("train", "melanoma"): 28,
        ("validation", "common_nevus"): 8, ("validation", "atypical_nevus"): 8, ("validation", "melanoma"): 4,
        ("test", "common_nevus"): 16, ("test", "atypical_nevus"): 16, ("test", "melanoma"): 8,
    }
    imd003 = cases["IMD003"]
    assert (imd003.asymmetry, imd003.criteria["pigment_network"], imd003.colors) == (
        "fully_symmetric", "typical", (False, False, False, True, False, False))
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
    with pytest.raises(DatasetError, match=r"IMD104_lesion\.bmp is 10x16 but its image .*IMD104\.bmp is 24x19: "
                                           r"expected the same size, or the same aspect ratio within one pixel"):
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


def test_row_without_image(dummy_ph2):
    shutil.rmtree(dummy_ph2 / "PH2 Dataset images" / "IMD105")
    with pytest.raises(DatasetError, match=r"line \d+: IMD105 has no folder"):
        ph2_source.read_cases(dummy_ph2)


def test_image_without_row(dummy_ph2):
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
