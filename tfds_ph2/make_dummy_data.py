"""Writes ``tfds_ph2/dummy_data/``: tiny fake PH2 and MADS downloads for the builder's unit tests.

The real PH2 files may not be redistributed, so the dummy data is drawn here. It keeps the quirks the
builder must handle: 1-bit BMP masks, a 24-bit top-down BMP mask, sizes that differ by case, the doubly
nested MADS folder with ``df.csv``, JPEG and PNG frames, and masks stored smaller than their image.

Run from the repository root: ``python tfds_ph2/make_dummy_data.py`` (deterministic output).
"""

from __future__ import annotations

import pathlib
import shutil
import struct

import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / "dummy_data"
PH2_HEADER = (
    "|| Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | "
    "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil || Colors ||"
)
PH2_LEGENDS = """
Legends for Clinical Diagnosis:
0 - Common Nevus
1 - Atypical Nevus
2 - Melanoma

Legends for Asymmetry:
0 - Fully Symmetric
1 - Symetric in 1 axe
2 - Fully Asymmetric

Legends for Pigment Network, Dots/Globules, Streaks, Regression Areas, and Blue-Whitish Veil:
A  - Absent
AT - Atypical
P  - Present
T  - Typical

Legends for Colors:
1 - White
2 - Red
3 - Light-Brown
4 - Dark-Brown
5 - Blue-Gray
6 - Black
"""
#: (id, histological, clinical, asymmetry, criteria, colours): 5 cases per diagnosis -> 9/3/3 split.
PH2_CASES = [
    (f"IMD{100 + i:03d}", hist, clinical, asym, crit, colors)
    for i, (hist, clinical, asym, crit, colors) in enumerate(
        [("", "0", "0", "T | A | A | A | A", "4")] * 5
        + [("Dysplastic Nevus", "1", "1", "AT | T | A | A | A", "3 4")] * 5
        + [("Melanoma", "2", "2", "AT | AT | P | P | P", "1 3 4 5 6")] * 5
    )
]
TOP_DOWN_MASK_CASE = "IMD100"
MADS_NESTED = "segmentation_full_body_mads_dataset_1192_img"


def blob_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def skin_image(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    skin = np.array([205, 160, 135], np.float32)
    lesion = np.array([95, 60, 45], np.float32)
    image = np.where(mask[..., None] > 0, lesion, skin) + rng.normal(0, 8, mask.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_top_down_bmp(path: pathlib.Path, rgb: np.ndarray) -> None:
    """24-bit BMP with a negative height (rows stored top to bottom), which Pillow cannot write."""
    height, width, _ = rgb.shape
    row_size = (width * 3 + 3) // 4 * 4
    rows = b"".join(rgb[y, :, ::-1].tobytes() + b"\0" * (row_size - width * 3) for y in range(height))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    path.write_bytes(header + info + rows)


def write_ph2(root: pathlib.Path, rng: np.random.Generator) -> None:
    lines = [PH2_HEADER]
    for index, (case_id, hist, clinical, asym, crit, colors) in enumerate(PH2_CASES):
        lines.append(f"|| {case_id} || {hist:<24} ||   {clinical} ||   {asym} |  {crit} || {colors:<12} ||")
        height, width = 18 + index % 3, 24 + index % 4  # odd and even sizes that differ by case
        mask = blob_mask(height, width, rng)
        folder = root / "PH2 Dataset images" / case_id
        (folder / f"{case_id}_Dermoscopic_Image").mkdir(parents=True)
        (folder / f"{case_id}_lesion").mkdir(parents=True)
        Image.fromarray(skin_image(mask, rng)).save(folder / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp")
        mask_path = folder / f"{case_id}_lesion" / f"{case_id}_lesion.bmp"
        if case_id == TOP_DOWN_MASK_CASE:
            write_top_down_bmp(mask_path, np.repeat(mask[..., None] * 255, 3, axis=-1).astype(np.uint8))
        else:
            Image.fromarray(mask * 255).convert("1").save(mask_path)
    (root / "PH2_dataset.txt").write_text("\n".join(lines) + "\n" + PH2_LEGENDS)


#: Frames of three recordings plus two names outside the MADS pattern, chosen so that their hashes cover
#: all three splits (train 3, validation 4, test 2). ``(stem, image format, mask scale)``.
MADS_FRAMES = [
    ("HipHop_HipHop1_C0_00180", "png", 1),
    ("HipHop_HipHop1_C1_00180", "png", 1),
    ("HipHop_HipHop1_C0_00185", "jpg", 2),
    ("Jazz_Jazz3_C0_00010", "png", 1),
    ("Jazz_Jazz3_C1_00010", "png", 2),
    ("Kata_Kata2_C0_00400", "png", 1),
    ("Kata_Kata2_C2_00400", "jpg", 1),
    ("person_0001", "jpg", 2),
    ("person_0002", "png", 1),
]


def write_mads(top: pathlib.Path, rng: np.random.Generator) -> None:
    root = top / MADS_NESTED / MADS_NESTED
    for sub in ("images", "masks", "collages"):
        (root / sub).mkdir(parents=True)
    rows = [",images,masks,collages"]
    for index, (stem, image_format, mask_scale) in enumerate(MADS_FRAMES):
        height, width = 24, 32
        mask = blob_mask(height, width, rng)
        Image.fromarray(skin_image(mask, rng)).save(root / "images" / f"{stem}.{image_format}")
        small = Image.fromarray(mask * 255).resize((width // mask_scale, height // mask_scale), Image.NEAREST)
        small.convert("RGB").save(root / "masks" / f"{stem}.png")  # RGB 0/255, as Kaggle ships them
        rows.append(f"{index},images/{stem}.{image_format},masks/{stem}.png,collages/{stem}.jpg")
    (top / MADS_NESTED / "df.csv").write_text("\n".join(rows) + "\n")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    rng = np.random.default_rng(20261125)
    write_ph2(OUT / "PH2Dataset", rng)
    write_mads(OUT, rng)
    print(f"wrote {sum(1 for p in OUT.rglob('*') if p.is_file())} files under {OUT}")


if __name__ == "__main__":
    main()
