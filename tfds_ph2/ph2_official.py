"""The 200 cases of the official PH2 database by split, as ``ph2_source.assign_splits`` assigns them on the full
``PH2_dataset.txt``: a copy that lists only official cases but not all of them is an incomplete copy, and the
build names the missing cases of each split instead of building different splits from what is left.

Case names only (no data), checked against the real download by ``tests/test_ph2_source.py``.
"""


def _case_names(numbers: str) -> tuple[str, ...]:
    return tuple(f"IMD{n}" for n in numbers.split())


OFFICIAL_SPLITS = {
    "train": _case_names("""
        002 004 008 009 013 014 015 017 019 021 022 023 024 027 031 032 035 037 038 039 041 042 043 044 047 049
        050 061 063 064 075 076 080 085 090 103 105 107 108 118 120 125 126 132 133 135 137 138 140 142 143 146
        147 149 150 153 156 157 160 164 166 168 170 171 173 175 177 182 196 197 198 199 203 204 206 207 208 211
        219 226 240 242 243 251 254 256 278 279 284 285 304 312 328 339 347 348 349 360 365 367 369 371 372 374
        375 376 378 380 381 382 385 388 392 393 394 395 396 397 398 399 402 403 404 405 407 408 417 419 420 421
        423 424 426 427 429 430 432 433 436 437
    """),
    "validation": _case_names("""
        010 033 057 065 078 088 144 154 162 169 200 210 280 384 389 390 400 409 425 434
    """),
    "test": _case_names("""
        003 006 016 018 020 025 030 036 040 045 048 058 091 092 101 112 134 139 152 155 159 161 176 305 306 331
        356 364 368 370 379 383 386 406 410 411 413 418 431 435
    """),
}
