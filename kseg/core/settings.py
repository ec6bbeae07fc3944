"""Checkers for the settings users give kseg, so that a value is checked once for type and range by the same
code whether it comes from a YAML or JSON config file, a command-line flag or Python.

A checker is a callable: ``check(value)`` returns the value as the setting's type or raises ``Invalid``,
whose message says what was expected and what was given (``expected an integer in [1, 100000], got True (a
boolean)``); the caller puts the field or flag name in front. The same checker is an argparse ``type=``:
argparse hands it text, which the numeric checkers parse, and ``Invalid`` is an ``ArgumentTypeError``, so
argparse prints its message after the flag's name. Numeric checkers accept numeric text from files too:
YAML 1.1 reads ``1e-3`` (no dot) as a string.

Booleans are not numbers here (``epochs: true`` and ``batch_size: yes`` are errors), NaN and infinity are
no numbers either, and every number has an upper bound: a typo such as ``--epochs 1e23`` should stop at
once, not after hours.

Messages never hold a full repr of what was given: a YAML alias bomb ("billion laughs") loads as a small
graph of shared lists whose repr is exponential, so ``shown`` uses ``reprlib`` with tight limits. No
TensorFlow here: ``kseg.client`` uses these checkers too.
"""

from __future__ import annotations

import argparse
import math
import numbers
import reprlib
from collections.abc import Callable, Iterable

#: Longest path kseg accepts (Linux's PATH_MAX).
MAX_PATH_LENGTH = 4096
#: Longest numeric text parsed: more digits cannot be in range, and Python refuses to parse over 4300.
_MAX_NUMBER_TEXT = 100

FOLDER_PREFIX = "folder:"
#: ``coco:FILE.json``: a COCO instances file (what labelling tools export) and the images it names.
COCO_PREFIX = "coco:"


class SettingError(argparse.ArgumentTypeError, ValueError):
    """A setting cannot be used as given; the caller adds the field or flag name in front of the message."""


class Invalid(SettingError):
    """A value fails its checker: ``expected <what passes>, got <the value, bounded>``."""

    def __init__(self, expected: str, value):
        self.expected = expected
        super().__init__(f"expected {expected}, got {shown(value)}")


# ------------------------------------------------------------------------------- bounded messages ---


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` with small limits: a few items of a few levels, whatever the value's size or sharing."""

    def __init__(self):
        super().__init__()
        self.maxlevel = 2
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 4
        self.maxset = self.maxfrozenset = self.maxdeque = 4
        self.maxstring = self.maxother = 80
        self.maxlong = 40

    def repr_int(self, x, level):
        # repr() of an integer of over 4300 digits raises, and converting one to text is quadratic.
        if x.bit_length() > 4 * self.maxlong:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)


_REPR = _BoundedRepr()
_KINDS = {bool: "a boolean", list: "a list", tuple: "a list", dict: "a mapping", set: "a set", bytes: "bytes"}


def bounded(value) -> str:
    """The repr of ``value`` cut to a few items of a few levels: at most a few hundred characters, computed
    in time independent of the value's size."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001  (a value whose repr fails is still named by its type)
        return f"<{type(value).__name__}>"


def shown(value) -> str:
    """``value`` for a message (``bounded``), with its kind where its text could mislead (``True (a
    boolean)``); ``None`` is ``null`` as a config file writes it."""
    if value is None:
        return "null"
    text = bounded(value)
    kind = _KINDS.get(type(value))
    if kind is None and not isinstance(value, (str, numbers.Real)):
        kind = f"a {type(value).__name__}"
    return f"{text} ({kind})" if kind else text


def clip(text: str, limit: int = 300) -> str:
    """Text from elsewhere (a parser's error) cut to ``limit`` characters for a one-line message."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------- checkers ---


def _integer(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _real(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
            return float(value.strip())
    except (ValueError, OverflowError):
        return None
    return None


def int_in(low: int, high: int) -> Callable:
    """An integer in ``[low, high]`` (an int or integer text; not a boolean, not 2.0)."""
    expected = f"an integer in [{low}, {high}]"

    def check(value) -> int:
        number = _integer(value)
        if number is None or not low <= number <= high:
            raise Invalid(expected, value)
        return number

    check.expected = expected
    return check


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable:
    """A finite number in the interval from ``low`` to ``high``, each end closed unless ``*_open``."""
    expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value) -> float:
        number = _real(value)
        if (
            number is None
            or not math.isfinite(number)
            or not (low < number if low_open else low <= number)
            or not (number < high if high_open else number <= high)
        ):
            raise Invalid(expected, value)
        return number

    check.expected = expected
    return check


def one_of(options: Iterable[str]) -> Callable:
    """One of ``options`` (text only: a list or mapping is refused, never hashed or compared)."""
    options = tuple(options)
    expected = f"one of {list(options)}"

    def check(value) -> str:
        if not isinstance(value, str) or value not in options:
            raise Invalid(expected, value)
        return value

    check.expected = expected
    return check


def boolean(value) -> bool:
    """``true`` or ``false`` only: ``1``, ``"yes"`` or ``null`` for an on/off setting is more likely a slip."""
    if not isinstance(value, bool):
        raise Invalid("true or false", value)
    return value


boolean.expected = "true or false"


def path(what: str = "a path") -> Callable:
    """Non-empty text of at most ``MAX_PATH_LENGTH`` characters with no NUL (which no file system takes)."""
    expected = f"{what} (text of 1 to {MAX_PATH_LENGTH} characters)"

    def check(value) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_PATH_LENGTH or "\0" in value:
            raise Invalid(expected, value)
        return value

    check.expected = expected
    return check


def dataset_name(value) -> str:
    """A TFDS name (``tfds_ph2/ph2``; kseg's loaders need the builder/config form), ``folder:PATH`` or
    ``coco:FILE.json``; a prefix needs a path after it."""
    prefix = next((p for p in (FOLDER_PREFIX, COCO_PREFIX) if isinstance(value, str) and value.startswith(p)), "")
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= len(prefix) + MAX_PATH_LENGTH
        or "\0" in value
        or (prefix and len(value) == len(prefix))
        or (not prefix and "/" not in value)
    ):
        raise Invalid(dataset_name.expected, value)
    return value


dataset_name.expected = "a TFDS name like tfds_ph2/ph2, folder:PATH or coco:FILE.json"


def image_size(min_side: int, max_side: int) -> Callable:
    """``256``, ``"256"``, ``"192x256"``, ``"192,256"`` or ``[192, 256]`` -> ``(height, width)``, each side an
    integer in ``[min_side, max_side]``."""
    side = int_in(min_side, max_side)

    def check(value) -> tuple[int, int]:
        if isinstance(value, str) and len(value) <= _MAX_NUMBER_TEXT:
            parts = value.lower().replace("x", ",").split(",")
        elif isinstance(value, (list, tuple)):
            parts = value
        else:
            parts = [value]
        if len(parts) == 1:
            parts = [parts[0], parts[0]]  # a square
        sides = [_integer(part) for part in parts] if len(parts) == 2 else [None]
        if None in sides:
            raise Invalid("a size like 256 or HxW like 192x256", value)
        try:
            return side(sides[0]), side(sides[1])
        except Invalid:
            raise Invalid(f"sides in [{min_side}, {max_side}]", value) from None

    check.expected = f"a size like 256 or HxW like 192x256, sides in [{min_side}, {max_side}]"
    return check


# ---------------------------------------------------------------- settings several commands share ---

#: A global batch: more than 4096 images at 256x256 is over 3 GiB of input alone, and PH2 holds 200 images.
BATCH_SIZE = int_in(1, 4096)
#: A probability strictly between 0 and 1: at 0 or 1 every pixel, or none, would be foreground.
THRESHOLD = float_in(0, 1, low_open=True, high_open=True)
#: Masks hold class ids as uint8 (0-255), so at most 256 classes; 1 means a binary foreground mask.
NUM_CLASSES = int_in(1, 256)
#: What ``keras.utils.set_random_seed`` accepts (NumPy's legacy seeding takes [0, 2**32 - 1]).
SEED = int_in(0, 2**32 - 1)


def is_folder_dataset(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


def is_coco_dataset(name: str) -> bool:
    return name.startswith(COCO_PREFIX)


def is_tfds_dataset(name: str) -> bool:
    """Neither ``folder:`` nor ``coco:``: a name TFDS builds and reads (the only kind a manual dir is for)."""
    return not (is_folder_dataset(name) or is_coco_dataset(name))


def check_num_classes_applies(num_classes, dataset: str) -> None:
    """A class count only for ``folder:`` datasets: they cannot say how many classes their masks hold without
    reading every mask, while a TFDS dataset declares its own (a given count would be ignored) and a COCO
    file holds instances of one class, person."""
    if num_classes is not None and not is_folder_dataset(dataset):
        what = (
            "a COCO file of instances, whose one class is person"
            if is_coco_dataset(dataset)
            else "a TFDS dataset, which declares its own classes"
        )
        raise SettingError(f"applies to folder: datasets only; {shown(dataset)} is {what} (got {shown(num_classes)})")
