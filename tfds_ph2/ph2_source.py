"""Reading the PH2 download: locating it, parsing ``PH2_dataset.txt`` and decoding each case.

Kept free of TFDS so that it can be tested and reused on its own; the builder only wires it to splits.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
from etils import epath

from segio import images
from segio.splits import stable_fraction
from tfds_ph2.common import DatasetError, fit_mask, require_dir, subdirs
from tfds_ph2.ph2_official import OFFICIAL_SPLITS

ROOT_FOLDER = "PH2Dataset"
IMAGES_FOLDER = "PH2 Dataset images"
METADATA_FILE = "PH2_dataset.txt"

CLINICAL_DIAGNOSES = ("common_nevus", "atypical_nevus", "melanoma")
ASYMMETRY = ("fully_symmetric", "symmetric_in_one_axis", "fully_asymmetric")
CRITERIA = ("pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil")
#: The legend of PH2_dataset.txt uses one code set for all five dermoscopic criteria.
CRITERION_CODES = {"A": "absent", "AT": "atypical", "P": "present", "T": "typical"}
CRITERION_VALUES = tuple(CRITERION_CODES.values())
COLORS = ("white", "red", "light_brown", "dark_brown", "blue_gray", "black")
MASK_LABELS = ("background", "lesion")

#: Share of each clinical diagnosis that goes to each split (PH2 has no official split).
SPLIT_SHARES = {"test": 0.2, "validation": 0.1, "train": 0.7}

logger = logging.getLogger(__name__)

_CASE_ID = re.compile(r"^IMD\d{3,}$")
_OFFICIAL_IDS = frozenset(i for ids in OFFICIAL_SPLITS.values() for i in ids)
#: Names listed in full in a "cases are missing" error before it says "and N more".
_LISTED = 12

INSTRUCTIONS = """\
PH2 must be downloaded by hand (registration and a research/education licence are required):
  1. Request and download PH2Dataset.rar from https://www.fc.up.pt/addi/ph2%20database.html
  2. Extract it (e.g. `unrar x PH2Dataset.rar` or `7z x PH2Dataset.rar`); you get a folder `PH2Dataset/`
     holding `PH2_dataset.txt` and `PH2 Dataset images/IMDxxx/...`.
  3. Build: `tfds build tfds_ph2 --config ph2 --manual_dir /path/to/PH2Dataset --imports tfds_ph2`
     (the PH2Dataset folder itself, its parent, or the folder the archive was extracted into).
No download needed to try kseg: `--config synthetic` (or the `synthetic-unet` training preset)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of ``PH2_dataset.txt``, already mapped from codes to names."""

    image_id: str
    histological_diagnosis: str
    clinical_diagnosis: str
    asymmetry: str
    criteria: dict
    colors: tuple
    line: int


def find_root(manual_dir) -> epath.Path:
    """The folder holding ``PH2_dataset.txt``: ``manual_dir`` itself, its ``PH2Dataset`` child, or one
    level further down (where an archive tool extracts into a folder of its own)."""
    manual_dir = epath.Path(manual_dir)
    require_dir(manual_dir, "The manual download folder", INSTRUCTIONS)
    candidates = [manual_dir, manual_dir / ROOT_FOLDER]
    for child in subdirs(manual_dir):
        candidates += [child, child / ROOT_FOLDER]
    for folder in candidates:
        if (folder / METADATA_FILE).exists():
            return folder
    for folder in candidates:
        if (folder / IMAGES_FOLDER).exists():
            raise DatasetError(
                f"{folder / METADATA_FILE} is missing: the PH2 archive ships it next to '{IMAGES_FOLDER}/'; "
                "it holds the diagnoses, so the build cannot go on without it."
            )
    archives = sorted(p.name for p in manual_dir.iterdir() if p.name.lower().endswith((".rar", ".zip", ".7z")))
    hint = f" Found the archive(s) {archives}: extract them first." if archives else ""
    raise DatasetError(f"No {METADATA_FILE} found in {manual_dir} or the folders below it.{hint}\n\n{INSTRUCTIONS}")


def _fields(line: str) -> list[str]:
    return [field.strip() for field in line.strip().strip("|").split("||")]


def _lookup(table: dict, code: str, what: str, where: str):
    if code not in table:
        raise DatasetError(f"{where}: unknown {what} code {code!r}; expected one of {sorted(table)}")
    return table[code]


def parse_metadata(path) -> dict[str, Case]:
    """All cases of ``PH2_dataset.txt`` by image id, in file order; any malformed row is an error."""
    path = epath.Path(path)
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    cases: dict[str, Case] = {}
    header_seen = False
    for number, line in enumerate(lines, start=1):
        where = f"{path}, line {number}"
        if not line.lstrip().startswith("||"):
            continue  # blank lines and the legends after the table
        fields = _fields(line)
        if fields and fields[0].lower() == "name":
            header_seen = True
            continue
        if len(fields) != 5:
            raise DatasetError(
                f"{where}: expected 5 '||'-separated fields (name, histological diagnosis, clinical "
                f"diagnosis, criteria, colours), got {len(fields)}: {line.strip()!r}"
            )
        image_id, histological, clinical, criteria_field, colors_field = fields
        if not _CASE_ID.match(image_id):
            raise DatasetError(f"{where}: expected an image name like IMD003, got {image_id!r}")
        if image_id in cases:
            raise DatasetError(f"{where}: {image_id} is listed twice (first on line {cases[image_id].line})")
        criteria = [c.strip() for c in criteria_field.split("|")]
        if len(criteria) != 1 + len(CRITERIA):
            raise DatasetError(
                f"{where}: expected asymmetry and {len(CRITERIA)} criteria separated by '|', got {criteria_field!r}"
            )
        colors = colors_field.split()
        if not colors or any(c not in "123456" or len(c) != 1 for c in colors):
            raise DatasetError(f"{where}: expected colour codes 1-6 separated by spaces, got {colors_field!r}")
        cases[image_id] = Case(
            image_id=image_id,
            histological_diagnosis=histological,
            clinical_diagnosis=_lookup(dict(zip("012", CLINICAL_DIAGNOSES)), clinical, "clinical diagnosis", where),
            asymmetry=_lookup(dict(zip("012", ASYMMETRY)), criteria[0], "asymmetry", where),
            criteria={
                name: _lookup(CRITERION_CODES, code, name.replace("_", " "), where)
                for name, code in zip(CRITERIA, criteria[1:])
            },
            colors=tuple(str(i) in colors for i in range(1, 7)),
            line=number,
        )
    if not header_seen and not cases:
        raise DatasetError(f"{path}: no PH2 table found (expected rows like '|| IMD003 || ... ||')")
    if not cases:
        raise DatasetError(f"{path}: the table has a header but no rows")
    return cases


def case_files(root: epath.Path, image_id: str) -> tuple[epath.Path, epath.Path]:
    folder = root / IMAGES_FOLDER / image_id
    return (
        folder / f"{image_id}_Dermoscopic_Image" / f"{image_id}.bmp",
        folder / f"{image_id}_lesion" / f"{image_id}_lesion.bmp",
    )


def case_folders(root: epath.Path) -> set[str]:
    """Names of the case folders in ``PH2 Dataset images/``. Plain files there (copies in circulation carry a
    conversion script, ``convertIms.sh``) are not cases: they are skipped with one warning naming them."""
    images_dir = root / IMAGES_FOLDER
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is missing: expected one folder per case (IMD003/, ...) in it")
    entries = [p for p in images_dir.iterdir() if not p.name.startswith(".")]
    stray = sorted(p.name for p in entries if not p.is_dir())
    if stray:
        logger.warning(
            "%s: skipping %d file(s) that are not case folders: %s", images_dir, len(stray), ", ".join(stray)
        )
    return {p.name for p in entries if p.is_dir()}


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_cases_match_folders(root: epath.Path, cases: dict[str, Case]) -> None:
    """Every case has a folder and every case folder has a row: nothing is dropped silently.

    Missing cases are reported by split. A ``PH2_dataset.txt`` that lists only official PH2 cases but not all 200
    is an incomplete copy of the official database: the cases it lacks are missing too (the splits of what is
    left would differ from everyone else's).
    """
    images_dir = root / IMAGES_FOLDER
    folders = case_folders(root)
    official_copy = bool(cases) and set(cases) < _OFFICIAL_IDS
    expected = dict(OFFICIAL_SPLITS) if official_copy else {}
    if not official_copy:
        split_of_case = assign_splits(cases)
        expected = {s: tuple(i for i in cases if split_of_case[i] == s) for s in SPLIT_SHARES}
    missing = {s: [i for i in ids if i not in folders or i not in cases] for s, ids in expected.items()}
    if any(missing.values()):
        parts = [
            f"{len(ids)} of the {len(expected[s])} {s} case{'s' if len(expected[s]) != 1 else ''} "
            f"{'are' if len(ids) != 1 else 'is'} missing: {_listed(ids)}"
            for s in ("train", "validation", "test")
            if (ids := missing[s])
        ]
        first = next(i for s in ("train", "validation", "test") for i in missing[s])
        without_row = sum(i not in cases for ids in missing.values() for i in ids)
        rows = (
            f"; {without_row} of the missing cases have no row in {root / METADATA_FILE} either (the official "
            f"database lists {len(_OFFICIAL_IDS)})"
            if without_row
            else ""
        )
        raise DatasetError(
            f"The PH2 copy in {root} is incomplete: {'; '.join(parts)}. Expected a folder per case in "
            f"{images_dir}, e.g. {images_dir / first} holding {first}_Dermoscopic_Image/{first}.bmp and "
            f"{first}_lesion/{first}_lesion.bmp{rows}."
        )
    without_row = sorted(folders - set(cases))
    if without_row:
        raise DatasetError(
            f"{images_dir / without_row[0]} has no row in {root / METADATA_FILE} "
            f"({len(without_row)} folder(s) without metadata: {without_row[:10]})"
        )


def assign_splits(cases: dict[str, Case]) -> dict[str, str]:
    """Split stratified by clinical diagnosis and independent of file order.

    Within each diagnosis, cases are ordered by a hash of their id; the first 20% (rounded) go to
    ``test``, the next 10% to ``validation`` and the rest to ``train``: 16/8/56 per nevus class and
    8/4/28 for melanoma on the full set.
    """
    splits = {}
    for diagnosis in CLINICAL_DIAGNOSES:
        ids = sorted(
            (c.image_id for c in cases.values() if c.clinical_diagnosis == diagnosis),
            key=lambda i: (stable_fraction(f"ph2/{i}"), i),
        )
        n_test = int(len(ids) * SPLIT_SHARES["test"] + 0.5)
        n_validation = int(len(ids) * SPLIT_SHARES["validation"] + 0.5)
        for rank, image_id in enumerate(ids):
            if rank < n_test:
                splits[image_id] = "test"
            elif rank < n_test + n_validation:
                splits[image_id] = "validation"
            else:
                splits[image_id] = "train"
    return splits


def load_example(root: epath.Path, case: Case) -> dict:
    """Decode one case into the builder's features; a mask that does not fit its image (``fit_mask``) is an error."""
    image_path, mask_path = case_files(root, case.image_id)
    for path, what in ((image_path, "dermoscopic image"), (mask_path, "lesion mask")):
        if not path.exists():
            raise DatasetError(f"{path}: {what} of {case.image_id} is missing")
    image = images.read_image(image_path)
    mask = fit_mask(images.read_binary_mask(mask_path), image.shape, image_path, mask_path)
    return {
        "image": image,
        "segmentation_mask": mask[..., None].astype(np.uint8),
        "image_id": case.image_id,
        "clinical_diagnosis": case.clinical_diagnosis,
        "histological_diagnosis": case.histological_diagnosis,
        "asymmetry": case.asymmetry,
        **case.criteria,
        "colors": np.array(case.colors, dtype=bool),
    }


def read_cases(manual_dir) -> tuple[epath.Path, dict[str, Case], dict[str, str]]:
    """Locate, parse and cross-check the download once; returns (root, cases, split of each case)."""
    root = find_root(manual_dir)
    cases = parse_metadata(root / METADATA_FILE)
    check_cases_match_folders(root, cases)
    splits = assign_splits(cases)
    for split in ("train", "validation", "test"):
        if split not in splits.values():
            raise DatasetError(
                f"{root / METADATA_FILE}: the {split} split would be empty: {len(cases)} cases are too few to give "
                f"each split at least one ({', '.join(f'{v:.0%} {k}' for k, v in SPLIT_SHARES.items())} of each "
                f"clinical diagnosis)"
            )
    return root, cases, splits
