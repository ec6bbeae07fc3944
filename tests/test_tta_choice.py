"""The flip-TTA rule the instance and keypoint evaluators share: TTA is kept only for a clear gain."""

import dataclasses

import pytest

from kseg.evaluation import tta_choice


@dataclasses.dataclass(frozen=True)
class Postprocessing:
    tta: bool = False
    other: int = 7


@pytest.mark.parametrize(
    ("plain", "flipped", "kept"),
    [(0.50, 0.506, True), (0.50, 0.504, False), (0.50, 0.48, False), (0.0, 0.005, True)],
)
def test_flip_is_kept_only_for_a_gain_of_at_least_the_margin(plain, flipped, kept):
    asked = []

    def score_of(candidate):
        asked.append(candidate)
        return flipped if candidate.tta else plain

    chosen, record = tta_choice.choose_flip(Postprocessing(tta=True), score_of, "PCK@0.2")
    assert chosen == Postprocessing(tta=kept)  # other fields pass through untouched
    assert sorted(c.tta for c in asked) == [False, True]
    assert record == {"steps": {"no TTA (PCK@0.2)": round(plain, 4), "flip TTA (PCK@0.2)": round(flipped, 4)}}
