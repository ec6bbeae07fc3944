"""Image files named on a command line, and the output names their masks get (``kseg.predict`` and
``kseg.client``; no TensorFlow here, the client must run without it).

Output names are unique by construction: an input ``NAME.ext`` gives ``NAME``; where two inputs share that,
the extension is kept (``x_jpg``, ``x_png``), then as many parent folders as it takes
(``site1_images_case_jpg``). The same file named twice (a folder and a subfolder of it, say) is read once. A
name too long for the file system once ``_overlay.png`` and the temporary suffix of an atomic write are added
is cut and given a hash of the whole name (``MAX_STEM_BYTES``), so it still gets its outputs.

A folder's files that kseg wrote itself (PNGs with its marker, ``kseg.core.outputs.MARKER``) are not inputs: an
output folder that is also the input folder is not predicted again on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

from kseg.core.outputs import is_kseg_output
from segio.images import IMAGE_SUFFIXES

#: File names are at most 255 bytes on common file systems; an output adds ``_overlay.png`` (12) and its
#: temporary name ``.`` + ``.xxxxxxxx.tmp`` (14).
MAX_STEM_BYTES = 255 - 12 - 14


@dataclasses.dataclass
class InputFiles:
    files: list[pathlib.Path]
    problems: list[str]  # inputs that do not exist or hold no image
    skipped: list[str]  # what was passed over on purpose, and why (subfolders, other files)


def collect_image_files(inputs, recursive: bool = False) -> InputFiles:
    """The image files among ``inputs`` (files, or folders: their images, and with ``recursive`` those of
    their subfolders), each once, in the order given."""
    files, problems, skipped, seen = [], [], [], set()

    def add(path: pathlib.Path):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            entries = sorted(path.rglob("*") if recursive else path.iterdir())
            images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            ours = [p for p in images if p.suffix.lower() == ".png" and is_kseg_output(p)]
            if ours:
                skipped.append(
                    f"{path}: {len(ours)} mask(s) or overlay(s) written by kseg not read as inputs (e.g. "
                    f"{ours[0].name})"
                )
                images = [p for p in images if p not in ours]
            others = [p for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
            folders = [p for p in entries if p.is_dir()] if not recursive else []
            if folders:
                skipped.append(
                    f"{path}: {len(folders)} subfolder(s) not read (e.g. {folders[0].name}/); add "
                    f"--recursive to include them"
                )
            if others:
                skipped.append(
                    f"{path}: {len(others)} file(s) without an image suffix not read (e.g. "
                    f"{others[0].name}); images end in {', '.join(IMAGE_SUFFIXES)}"
                )
            if not images and not ours:
                problems.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for image in images:
                add(image)
        elif path.is_file():
            add(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return InputFiles(files, problems, skipped)


def _name(path: pathlib.Path, level: int) -> str:
    """Level 0: the stem; 1: stem and extension; k >= 2: also the k - 1 nearest parent folders."""
    if level == 0:
        return path.stem
    name = path.stem + (f"_{path.suffix[1:]}" if path.suffix else "")
    parents = [p for p in path.resolve().parent.parts if p not in ("/", "")][::-1][: level - 1][::-1]
    return "_".join([*parents, name])


def output_stems(files) -> list[str]:
    """A distinct output stem per file (``files`` distinct paths), as short as uniqueness allows."""
    paths = [pathlib.Path(f) for f in files]
    levels = [0] * len(paths)
    deepest = [len(p.resolve().parts) + 1 for p in paths]
    while True:
        names = [_name(p, level) for p, level in zip(paths, levels)]
        clashing = {i for i, n in enumerate(names) if names.count(n) > 1}
        if not clashing or all(levels[i] >= deepest[i] for i in clashing):
            break
        for i in clashing:
            levels[i] = min(levels[i] + 1, deepest[i])
    # Paths that stay equal even with every parent are the same file given twice: number them.
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}_{counts[name]}")
    return [_fit_length(name) for name in unique]


def _fit_length(stem: str) -> str:
    """``stem`` if it fits ``MAX_STEM_BYTES``, else its start and 8 hex digits of a hash of all of it."""
    data = stem.encode("utf-8")
    if len(data) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha256(data).hexdigest()[:8]
    start = data[: MAX_STEM_BYTES - 9].decode("utf-8", "ignore")  # whole characters only
    return f"{start}-{digest}"
