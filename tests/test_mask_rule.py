"""The one binary mask rule (``segio.images.mask_to_binary``): masks are read by the values they hold, not by
their file's bit depth, on real files through the public readers, a ``folder:`` dataset, ``kseg.show`` and
the TFDS builder; and a split of empty masks is a warning."""

import json
import logging
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kseg import data
from kseg.core import imageio

NESTED = "segmentation_full_body_mads_dataset_1192_img"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Folder-dataset verdicts go to a fresh cache per test (an old verdict must not decide a new test)."""
    path = tmp_path_factory.mktemp("kseg-cache")
    monkeypatch.setenv("KSEG_CACHE_DIR", str(path))
    return path


@pytest.fixture
def logged():
    """``logged("kseg.data")``: the list of records that logger emits from now on, caught on the logger itself
    (kseg's commands stop their loggers' propagation, so a root handler such as caplog's may see nothing)."""
    caught = []

    def catch(name: str) -> list:
        handler = logging.Handler(logging.INFO)
        handler.records = []
        handler.emit = handler.records.append
        logger = logging.getLogger(name)
        caught.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler.records

    yield catch
    for logger, handler, level in caught:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _warnings(records) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


def _square(height=24, width=32) -> np.ndarray:
    """{0, 1} ``(height, width)`` with a rectangle of foreground (a quarter of the picture)."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    return mask


def _save(path, image, **options):
    image.save(path, **options)
    return path


def _sixteen_bit(values: np.ndarray) -> Image.Image:
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode == "I;16"
    return image


# ----------------------------------------------------------------------------- public readers ---


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("png16_0_255", lambda m: _sixteen_bit(m * 255)),  # 8-bit values in a 16-bit PNG
        ("png16_0_1000", lambda m: _sixteen_bit(m.astype(np.uint16) * 1000)),
        ("png8_0_100", lambda m: Image.fromarray(m * 100)),
        ("palette_dark_red", lambda m: _palette(m, (100, 0, 0))),
    ],
)
def test_two_values_the_larger_is_foreground_whatever_they_are(tmp_path, name, make):
    mask = _square()
    path = _save(tmp_path / f"{name}.png", make(mask))
    np.testing.assert_array_equal(imageio.read_binary_mask(path), mask)


def _palette(mask, colour):
    image = Image.fromarray(mask, "P")
    image.putpalette([0, 0, 0, *colour] + [0] * (3 * 254))
    return image


def test_float_tiff_mask_of_two_values_below_one(tmp_path):
    mask = _square()
    path = _save(tmp_path / "m.tif", Image.fromarray(mask.astype(np.float32) * 0.8))
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(imageio.read_binary_mask(path), mask)


def test_zero_one_mask_saved_as_jpeg_comes_out_right(tmp_path):
    """JPEG is lossy: a 0/1 mask decodes with stray 2s that a threshold at half of 255 read as empty. What
    comes out is what the file holds (every non-zero pixel), as close to the drawn mask as JPEG left it."""
    drawing = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(drawing).ellipse((9, 7, 50, 38), fill=1)  # edges across JPEG's 8x8 blocks
    path = _save(tmp_path / "m.jpg", drawing, quality=95)
    stored = np.asarray(Image.open(path))
    assert stored.max() == 2, "the JPEG should carry its compression noise for this test"
    result = imageio.read_binary_mask(path)
    np.testing.assert_array_equal(result, stored >= 1)
    assert np.mean(result == np.asarray(drawing)) > 0.98


def test_anti_aliased_mask_is_split_between_its_two_levels(tmp_path):
    """A lesion drawn at 100 (not 255) at 4x and downscaled: anti-aliased edges between 0 and 100."""
    big = Image.new("L", (256, 192), 0)
    ImageDraw.Draw(big).ellipse((40, 30, 200, 170), fill=100)
    path = _save(tmp_path / "m.png", big.resize((64, 48), Image.LANCZOS))
    values = np.unique(np.asarray(Image.open(path)))
    assert len(values) > 10 and values.max() <= 110
    expected = np.asarray(big.resize((64, 48), Image.NEAREST)) > 0
    result = imageio.read_binary_mask(path)
    assert np.mean(result == expected) > 0.99 and result.sum() > 0.2 * result.size


def test_class_ids_in_a_lossless_file_are_an_error_naming_file_values_and_flag(tmp_path):
    ids = np.zeros((24, 32), np.uint8)
    ids[2:12, 2:16], ids[12:22, 16:30] = 1, 2
    path = _save(tmp_path / "ids.png", Image.fromarray(ids))
    with pytest.raises(imageio.MaskValuesError) as caught:
        imageio.read_binary_mask(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a binary mask: it holds the values 0, 1, 2")
    assert "--num-classes 3" in message
    assert isinstance(caught.value, imageio.ImageReadError)  # skipped/reported like any unreadable file


@pytest.mark.parametrize("kind", ["grey_picture", "nan_float"])
def test_masks_that_are_not_two_levels_are_an_error(tmp_path, kind):
    if kind == "grey_picture":
        noise = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)
        path, expected = _save(tmp_path / "grey.png", Image.fromarray(noise)), r"of its pixels lie between"
    else:
        values = _square().astype(np.float32)
        values[0, 0] = np.nan
        path, expected = _save(tmp_path / "nan.tif", Image.fromarray(values)), r"NaN or infinite"
    with pytest.raises(imageio.MaskValuesError, match=rf"^{re.escape(str(path))}: .*{expected}"):
        imageio.read_binary_mask(path)


# ------------------------------------------------------------------------------- end to end ---


def _folder(root, masks: dict, size=(24, 32)):
    """``root/images/NAME.png`` (a bright square where the mask is) and ``root/masks/NAME.png`` from
    ``{name: PIL mask image}``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask_image in masks.items():
        picture = np.full((*size, 3), 40, np.uint8)
        picture[_square(*size) == 1] = 220
        Image.fromarray(picture).save(root / "images" / f"{name}.png")
        mask_image.save(root / "masks" / f"{name}.png")
    return root


def test_folder_dataset_with_16_bit_0_255_masks(tmp_path, logged):
    root = _folder(tmp_path / "ds", {f"im{i}": _sixteen_bit(_square() * 255) for i in range(4)})
    records = logged("kseg.data")
    examples = list(data.load_examples(f"folder:{root}", "all").as_numpy_iterator())
    assert len(examples) == 4
    for example in examples:
        np.testing.assert_array_equal(example["mask"][..., 0], _square())
    assert _warnings(records) == []
    _, masks = next(iter(data.load(f"folder:{root}", "all", image_size=(24, 32), batch_size=4)))
    assert float(masks.numpy().mean()) == pytest.approx(0.25)


def test_kseg_show_draws_the_masks_of_16_bit_0_255_files(tmp_path, monkeypatch):
    """``python -m kseg.show folder:...``: the masks it outlines are the files' masks, not empty ones."""
    from kseg import show
    from kseg.evaluation import plots

    root = _folder(tmp_path / "ds", {f"im{i}": _sixteen_bit(_square() * 255) for i in range(3)})
    drawn = {}
    draw = plots.contour_grid

    def capture(out, images, true_masks=None, **kwargs):
        drawn["masks"] = [np.asarray(m)[..., 0] for m in true_masks]
        return draw(out, images, true_masks=true_masks, **kwargs)

    monkeypatch.setattr(plots, "contour_grid", capture)
    out = tmp_path / "shown.png"
    assert show.main([f"folder:{root}", "--split", "all", "--out", str(out)]) == 0
    assert out.exists() and len(drawn["masks"]) == 3
    for mask in drawn["masks"]:
        np.testing.assert_array_equal(mask, _square())


def test_folder_dataset_of_class_ids_names_the_file_unless_num_classes_says_so(tmp_path):
    ids = np.zeros((24, 32), np.uint8)
    ids[2:12, 2:16], ids[12:22, 16:30] = 1, 2
    root = _folder(tmp_path / "ds", {"a": Image.fromarray(ids), "b": Image.fromarray(ids)})
    with pytest.raises(imageio.MaskValuesError, match=rf"^{root}/masks/a\.png: not a binary mask.*--num-classes 3"):
        data.load_examples(f"folder:{root}", "all")
    masks = [ex["mask"][..., 0] for ex in data.load_examples(f"folder:{root}", "all", num_classes=3)]
    np.testing.assert_array_equal(masks[0], ids)


def test_folder_split_of_empty_masks_is_a_warning_also_from_the_cache(tmp_path, logged):
    root = _folder(tmp_path / "ds", {f"im{i}": Image.new("L", (32, 24), 0) for i in range(3)})
    records = logged("kseg.data")
    for attempt in ("decoded", "cached"):
        records.clear()
        assert len(list(data.load_examples(f"folder:{root}", "all"))) == 3
        assert _warnings(records) == [
            f"folder:{root} split all: all 3 masks are empty (no foreground pixel); check that the masks are the "
            f"ones meant, e.g. with python -m kseg.show folder:{root} --split all"
        ], attempt


def test_verdicts_cached_under_the_old_mask_rule_are_recomputed(tmp_path, cache_dir):
    """The old readers cached 'binary' verdicts (without a foreground count) for masks they read as empty;
    those must not stand in for a check by the new rule."""
    root = _folder(tmp_path / "ds", {f"im{i}": _sixteen_bit(_square() * 255) for i in range(2)})
    pairs = data.folder_pairs(str(root), "all")
    old = {}
    for _, image_path, mask_path in pairs:
        for path, kind in ((image_path, "image"), (mask_path, "binary")):
            old[path] = [kind, *data._stat(path), [24, 32]]  # what the old check wrote for a good pair
    cache_file = data._check_cache_file(str(root))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"folder": str(root), "files": old}))
    foreground = data.check_folder_files(str(root), pairs)
    assert foreground == {mask: int(_square().sum()) for _, _, mask in pairs}
    entries = json.loads(cache_file.read_text())["files"]
    assert {entries[mask][0] for _, _, mask in pairs} == {"binary/2"}


# ------------------------------------------------------------------------------- TFDS builder ---


def test_mads_reader_reads_16_bit_0_255_masks(dummy_mads):
    from tfds_ph2 import mads_source

    root = dummy_mads / NESTED / NESTED
    stem = "Jazz_Jazz3_C0_00010"
    mask = _square()
    _sixteen_bit(mask * 255).save(root / "masks" / f"{stem}.png")
    example = mads_source.load_example(stem, root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png")
    np.testing.assert_array_equal(example["segmentation_mask"][..., 0], mask)


def test_builder_warns_when_a_split_has_only_empty_masks(dummy_mads, tmp_path, logged):
    import tensorflow_datasets as tfds

    import tfds_ph2  # noqa: F401  (registers the builder)

    for path in (dummy_mads / NESTED / NESTED / "masks").iterdir():
        Image.new("L", Image.open(path).size, 0).save(path)
    builder = tfds.builder("tfds_ph2/mads", data_dir=str(tmp_path / "data"))
    records = logged("tfds_ph2")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(dummy_mads)))
    warnings = sorted(_warnings(records))
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert sorted(sizes) == ["test", "train", "validation"] and all(sizes.values())
    assert warnings == sorted(
        f"tfds_ph2/mads split {split}: all {count} masks are empty (no foreground pixel); check the mask files "
        f"of the download"
        for split, count in sizes.items()
    )


def test_a_mask_with_an_ignore_border_is_refused_not_read_as_its_border(tmp_path):
    """0 background, 1 object, 255 a VOC-style "ignore" border: three exact values, none of them noise. Read
    with a tolerance around the levels, the object (1) counted as background and only the border was left."""
    mask = np.zeros((24, 32), np.uint8)
    mask[4:20, 6:26] = 1
    mask[4:20, 6:8] = mask[4:20, 24:26] = mask[4:6, 6:26] = mask[18:20, 6:26] = 255
    path = _save(tmp_path / "ignore.png", Image.fromarray(mask))
    with pytest.raises(imageio.MaskValuesError, match=r"not a binary mask: it holds the values 0, 1, 255"):
        imageio.read_binary_mask(path)


def test_kseg_show_takes_num_classes_for_a_folder_of_class_ids(tmp_path, capsys):
    from kseg import show

    ids = np.zeros((24, 32), np.uint8)
    ids[2:12, 2:16], ids[12:22, 16:30] = 1, 2
    root = _folder(tmp_path / "ds", {"a": Image.fromarray(ids), "b": Image.fromarray(ids)})
    out = tmp_path / "shown.png"
    assert show.main([f"folder:{root}", "--split", "all", "--out", str(out)]) == 2
    assert "--num-classes 3" in capsys.readouterr().err
    assert show.main([f"folder:{root}", "--split", "all", "--out", str(out), "--num-classes", "3"]) == 0
    assert out.exists()
    assert show.main(["tfds_ph2/synthetic", "--out", str(out), "--num-classes", "3"]) == 2
    assert "--num-classes: applies to folder: datasets only" in capsys.readouterr().err


@pytest.mark.parametrize("colour", [0, 255])
def test_a_cut_out_mask_drawn_as_opacity_is_read_from_its_alpha(tmp_path, colour):
    """A mask saved as a cut-out (one colour everywhere, the shape in alpha) used to be all foreground when the
    colour was white."""
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = _square() * 255
    path = _save(tmp_path / "cutout.png", Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(imageio.read_binary_mask(path), _square())
