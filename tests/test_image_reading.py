"""Images as every viewer shows them: EXIF orientation applied (to images and masks alike), float and 16-bit
images scaled by their real range or refused, and decompression bombs named like any unreadable file."""

import re
import warnings

import numpy as np
import pytest
from PIL import Image

from kseg import data
from kseg.core import imageio

ORIENTATION = 0x0112


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("kseg-cache")
    monkeypatch.setenv("KSEG_CACHE_DIR", str(path))
    return path


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _stored_picture(height=24, width=32) -> np.ndarray:
    """RGB, black with a white block in the stored top-left corner (so any turn or flip moves it)."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[: height // 3, : width // 4] = 255
    return picture


# ------------------------------------------------------------------------------------ EXIF ---


@pytest.mark.parametrize(("orientation", "upright"), [(6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied_to_images(tmp_path, orientation, upright):
    stored = _stored_picture()
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=_exif(orientation), quality=100, subsampling=0)
    decoded = imageio.decode_pil(path.read_bytes(), str(path))
    assert decoded.size == (32, 24)  # as stored, so that exif_rotates can look at it
    assert imageio.exif_rotates(decoded)
    image = imageio.read_image(path)
    assert image.shape == (32, 24, 3)
    assert np.abs(image.astype(int) - upright(stored).astype(int)).max() < 8  # JPEG noise only


def test_exif_rotates_is_false_without_a_turn(tmp_path):
    for name, exif in (("plain.jpg", None), ("upright.jpg", _exif(1))):
        path = tmp_path / name
        Image.fromarray(_stored_picture()).save(path, **({"exif": exif} if exif else {}))
        assert not imageio.exif_rotates(imageio.decode_pil(path.read_bytes(), name))
        assert imageio.read_image(path).shape == (24, 32, 3)


def test_exif_orientation_is_applied_to_masks(tmp_path):
    stored = (_stored_picture()[..., 0] > 0).astype(np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(stored * 255).save(path, exif=_exif(6))
    np.testing.assert_array_equal(imageio.read_binary_mask(path), np.rot90(stored, -1))
    Image.fromarray(stored * 2).save(path, exif=_exif(6))  # class ids
    np.testing.assert_array_equal(imageio.read_label_mask(path), np.rot90(stored * 2, -1))


def test_folder_dataset_of_a_phone_photo_and_its_upright_mask(tmp_path):
    """The annotator drew the mask on the photo as viewers show it (turned); image and mask must agree."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stored = _stored_picture(48, 64)
    Image.fromarray(stored).save(root / "images" / "phone.jpg", exif=_exif(6), quality=100, subsampling=0)
    upright_mask = (np.rot90(stored, -1)[..., 0] > 127).astype(np.uint8)
    Image.fromarray(upright_mask * 255).save(root / "masks" / "phone.png")
    (example,) = data.load_examples(f"folder:{root}", "all").as_numpy_iterator()
    assert example["image"].shape == (64, 48, 3) and example["mask"].shape == (64, 48, 1)
    bright = example["image"][..., 0] > 127
    np.testing.assert_array_equal(bright, example["mask"][..., 0] == 1)


# ----------------------------------------------------------------------- float and 16-bit ---


def test_float_tiff_images_are_scaled_by_their_range(tmp_path):
    ramp = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    unit, byte = tmp_path / "unit.tif", tmp_path / "byte.tif"
    Image.fromarray(ramp).save(unit)
    Image.fromarray(ramp * 255).save(byte)
    assert Image.open(unit).mode == "F"
    expected = np.round(ramp * 255).astype(np.uint8)
    for path in (unit, byte):
        image = imageio.read_image(path)
        assert image.shape == (6, 8, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image[..., 1], expected)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.linspace(-1, 1, 48), r"float image with values from -1 to 1; expected values in \[0, 1\]"),
        (np.linspace(0, 300, 48), r"float image with values from 0 to 300; expected values in \[0, 1\]"),
        (np.where(np.arange(48) == 3, np.nan, 0.5), r"holds NaN or infinite values"),
    ],
)
def test_float_images_out_of_range_are_an_error_naming_file_and_range(tmp_path, values, expected):
    path = tmp_path / "odd.tif"
    Image.fromarray(values.astype(np.float32).reshape(6, 8)).save(path)
    with pytest.raises(imageio.ImageReadError, match=rf"^{re.escape(str(path))}: .*{expected}"):
        imageio.read_image(path)


@pytest.mark.parametrize(("peak", "scale"), [(200, 255), (1000, 1023), (4000, 4095)])
def test_16_bit_images_are_scaled_by_the_smallest_range_that_holds_them(tmp_path, peak, scale):
    """8-bit data stored in 16 bits must not come out black, nor 10- or 12-bit sensor data nearly black."""
    values = np.linspace(0, peak, 48).round().astype(np.uint16).reshape(6, 8)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = imageio.read_image(path)
    np.testing.assert_array_equal(image[..., 0], np.round(values * (255 / scale)).astype(np.uint8))


# ---------------------------------------------------------------------- decompression bombs ---


def test_decompression_bomb_is_an_image_read_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (20, 20)).save(path)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), "white").save(tiny)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels: over twice the limit, Pillow refuses
    with pytest.raises(
        imageio.ImageReadError,
        match=rf"^{re.escape(str(path))}: 400 pixels, more than Pillow's decompression-bomb limit of 200 pixels",
    ):
        imageio.read_image(path)
    assert imageio.read_image(tiny).tolist() == [[[255, 255, 255]]]
    assert imageio.read_binary_mask(tiny).tolist() == [[1]]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # over the limit: Pillow's warning, an error under -W error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(imageio.ImageReadError, match=r"huge\.png: 400 pixels, more than .* limit of 300 pixels"):
            imageio.decode_pil(path.read_bytes(), str(path))


def test_predict_skips_a_decompression_bomb_like_any_unreadable_file(tmp_path, monkeypatch):
    from kseg.core import outputs
    from kseg.prediction import image_files

    class EmptyPredictor:  # every mask empty: only which files get through matters here
        num_classes = 1

        def predict(self, images, batch_size=8, postprocessing=None):
            return [np.zeros(image.shape[:2], np.uint8) for image in images]

        def prediction_files(self, image, mask, source=""):
            return outputs.semantic_files(image, mask, True, source)

    good, huge = tmp_path / "good.png", tmp_path / "huge.png"
    Image.new("RGB", (8, 8)).save(good)
    Image.new("RGB", (20, 20)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    written, errors = image_files.predict_files(EmptyPredictor(), [str(huge), str(good)], tmp_path / "out")
    assert len(written) == 1 and (tmp_path / "out" / "good_mask.png").exists()
    assert len(errors) == 1 and errors[0].startswith(f"{huge}: 400 pixels, more than Pillow's decompression-bomb")
