"""Image and mask decoding: every mode PH2, MADS and users throw at it, and errors that name the file."""

import io

import numpy as np
import pytest
from PIL import Image

from kseg.core import imageio


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def test_one_bit_bmp_mask(tmp_path):
    mask = np.zeros((7, 9), np.uint8)
    mask[2:5, 3:8] = 1
    path = _save(tmp_path, "m.bmp", Image.fromarray(mask * 255).convert("1"))
    np.testing.assert_array_equal(imageio.read_binary_mask(path), mask)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_mask_modes_threshold_to_binary(tmp_path, mode):
    mask = np.zeros((6, 8), np.uint8)
    mask[1:4, 2:6] = 255
    image = Image.fromarray(mask).convert(mode)
    np.testing.assert_array_equal(imageio.read_binary_mask(_save(tmp_path, "m.png", image)), mask // 255)


def test_mask_already_zero_one_is_kept(tmp_path):
    mask = np.eye(5, dtype=np.uint8)
    np.testing.assert_array_equal(imageio.read_binary_mask(_save(tmp_path, "m.png", Image.fromarray(mask))), mask)


def test_mask_in_alpha_channel_only(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1:3, 1:3, 3] = 255
    result = imageio.read_binary_mask(_save(tmp_path, "m.png", Image.fromarray(rgba, "RGBA")))
    assert result.sum() == 4 and result[1, 1] == 1


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "I;16"])
def test_images_of_any_mode_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(np.linspace(0, 255, 48, dtype=np.uint8).reshape(6, 8))
    # A uint16 array becomes an I;16 image by itself; Pillow 13 refuses fromarray's mode argument for it.
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    assert image.mode == mode
    array = imageio.read_image(_save(tmp_path, "x.png", image))
    assert array.shape == (6, 8, 3) and array.dtype == np.uint8
    if mode == "I;16":  # 16-bit scaled to 8-bit, not clipped
        np.testing.assert_array_equal(array[..., 0], np.asarray(base))


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(imageio.ImageReadError, match="missing.png: file not found"):
        imageio.read_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(imageio.ImageReadError, match="empty.png: file is empty"):
        imageio.read_image(empty)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buffer.getvalue()[:80])
    with pytest.raises(imageio.ImageReadError, match="cut.png: cannot decode image.*truncated"):
        imageio.read_image(truncated)


def test_resize_mask_nearest_keeps_labels():
    mask = np.array([[0, 1], [2, 0]], np.uint8)
    resized = imageio.resize_mask_nearest(mask, 4, 4)
    np.testing.assert_array_equal(resized, np.kron(mask, np.ones((2, 2), np.uint8)))


def test_kseg_imageio_is_segio_images_under_its_old_name():
    import segio.images

    for name in ("ImageReadError", "read_image", "read_binary_mask", "read_label_mask", "fit_mask_to_image"):
        assert getattr(imageio, name) is getattr(segio.images, name)
