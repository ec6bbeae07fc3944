"""Procedural dermoscopy-like images with exact lesion masks (the ``synthetic`` config of the PH2 builder).

Every example is drawn from ``numpy.random.default_rng([seed, index])``, so it needs no download and
is reproducible. Each image is built in this order:

* skin: a tone chosen between light pinkish-beige and tan, low-frequency shading, mottled mid-scale
  texture, faint skin lines and fine per-pixel noise;
* lesion: an ellipse whose radius is perturbed by a random Fourier series (non-convex, irregular),
  sometimes joined with satellite blobs, with an extra fractal jitter on the border. Its opacity
  ``alpha`` rises smoothly from 0 to 1 across a soft border whose width varies along the outline.
  Inside, the colour mixes brown, dark brown and bluish-grey tones, with granular speckles, a pigment
  network, dots and sometimes a pale (regression) patch. Sizes run from small to large, and large lesions run off the
  image. The contrast to the skin varies; some lesions are faint;
* hairs: 0 to ~40 dark, thin, curved strokes (cubic Bezier curves) that cross lesion and skin;
* vignetting: the dark circular rim of a dermatoscope lens, at varying radius and softness;
* sensor noise, then rounding to uint8.

The mask is exactly ``alpha >= 0.5``. Hairs, vignetting and colours never change it.

Reproducibility: the randomness is uniform draws and integers from PCG64. On the pixel grid the code
uses only elementwise IEEE arithmetic, ``sqrt``, ``floor`` and exact sums (no per-pixel
``sin``/``exp``/``pow``/``arctan2``, and no BLAS), so every value is correctly rounded and does not
depend on the CPU's SIMD paths. The few scalars that come from ``exp``/``log``/``pow`` are rounded to
1e-6 first (``_q``). The same NumPy release should therefore give the same bytes on any machine.
``tests/test_synthetic.py`` pins two digests. This was checked on one x86-64 machine only.

Pure NumPy: no TensorFlow, no file I/O (build times: docs/speed.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["SPLITS", "SIZES", "generate_example", "generate_split", "split_indices"]

# Number of examples per split. The splits use consecutive, disjoint index ranges in this order.
SPLITS = {"train": 200, "validation": 50, "test": 50}

# (height, width) choices. All are 3:4 like PH2's 576x768 images, scaled down.
SIZES = ((192, 256), (216, 288), (240, 320), (264, 352), (288, 384))

# Skin tones (RGB in [0, 1]), from light pinkish to tan. PH2 skin is roughly (205-225, 140-180, 100-170).
_SKIN_TONES = np.array(
    [
        [0.93, 0.78, 0.74],  # light pink
        [0.90, 0.72, 0.66],  # pinkish beige
        [0.88, 0.66, 0.52],  # beige
        [0.84, 0.58, 0.42],  # orange tan
        [0.76, 0.53, 0.40],  # tan
        [0.64, 0.45, 0.36],  # darker tan
    ],
    dtype=np.float32,
)

# Pigment tones (RGB in [0, 1]).
_LIGHT_PIGMENTS = np.array(
    [
        [0.72, 0.46, 0.29],  # light brown
        [0.68, 0.40, 0.22],  # orange brown
        [0.64, 0.38, 0.28],  # reddish brown
        [0.62, 0.44, 0.32],  # greyish brown
    ],
    dtype=np.float32,
)
_DARK_PIGMENTS = np.array(
    [
        [0.46, 0.27, 0.16],  # brown
        [0.36, 0.21, 0.13],  # dark brown
        [0.26, 0.16, 0.12],  # very dark brown
        [0.30, 0.20, 0.17],  # dark grey-brown
    ],
    dtype=np.float32,
)
_BLUE_GREYS = np.array(
    [
        [0.42, 0.43, 0.52],  # bluish grey
        [0.33, 0.32, 0.40],  # dark blue-grey
        [0.55, 0.55, 0.62],  # light blue-white veil
    ],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [
        [0.12, 0.08, 0.07],  # black
        [0.22, 0.14, 0.10],  # dark brown
        [0.34, 0.23, 0.16],  # brown
    ],
    dtype=np.float32,
)


def split_indices(split: str) -> range:
    """The example indices that make up ``split`` (consecutive ranges in the order of ``SPLITS``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    start = 0
    for name, count in SPLITS.items():
        if name == split:
            return range(start, start + count)
        start += count
    raise AssertionError("unreachable")


def generate_split(split: str, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """Yields ``(key, example)`` for every example of ``split``. The key is the example's ``image_id``."""
    for index in split_indices(split):
        example = generate_example(index, seed=seed)
        yield example["image_id"], example


def generate_example(index: int, seed: int = 0) -> dict:
    """One synthetic dermoscopy example.

    Returns ``{"image": uint8 (H, W, 3), "segmentation_mask": uint8 (H, W, 1) in {0, 1},
    "image_id": "SYN0007"}``. ``(H, W)`` is one of ``SIZES``. The same ``(index, seed)`` always
    gives identical arrays. The mask always contains foreground and background.
    """
    index = int(index)
    seed = int(seed)
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    rng = np.random.default_rng([seed, index])
    h, w = SIZES[int(rng.integers(len(SIZES)))]

    # Everything on the pixel grid is float32 (IEEE arithmetic, so still bit-reproducible).
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]

    skin, lum = _skin(rng, h, w)
    alpha, depth, radius = _lesion_alpha(rng, h, w, yy, xx)
    mask = alpha >= 0.5
    # Paint the lesion only inside the bounding box of alpha > 0 (saves time for small lesions).
    rows = np.flatnonzero((alpha > 0.0).any(axis=1))
    cols = np.flatnonzero((alpha > 0.0).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    image = skin.copy()
    image[box] = _paint_lesion(rng, skin[box], lum[box], alpha[box], depth[box], mask[box], radius)
    image = _speckles(rng, image, h, w)
    image = _hairs(rng, image, h, w)
    image = _vignette(rng, image, h, w, yy, xx)
    image = image * (1.0 + 0.03 * (_tri_noise(rng, (h, w, 1)) - 0.5)) + 0.02 * (_tri_noise(rng, (h, w, 3)) - 0.5)
    image = np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return {
        "image": image,
        "segmentation_mask": mask.astype(np.uint8)[:, :, None],
        "image_id": f"SYN{index:04d}",
    }


# ---------------------------------------------------------------------------------------------
# noise helpers (uniform draws + arithmetic only)


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(rng.random())


def _q(x):
    """Rounds scalars that come from transcendental functions (exp, log, pow) to 1e-6.

    Different libm/SIMD implementations can differ in the last bit. Rounding makes the geometry
    the same on every machine, except with a negligible probability.
    """
    return np.round(x, 6) if isinstance(x, np.ndarray) else round(float(x), 6)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _tri_noise(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Per-pixel noise in [0, 1] with a triangular distribution (mean of two uniforms)."""
    return 0.5 * (rng.random(shape, dtype=np.float32) + rng.random(shape, dtype=np.float32))


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field in [0, 1]: a random lattice with ``cell`` pixel spacing, smoothstep-interpolated."""
    cell = max(float(cell), 1.0)
    oy, ox = rng.random(2)
    y = np.arange(h, dtype=np.float32) / np.float32(cell) + np.float32(oy)
    x = np.arange(w, dtype=np.float32) / np.float32(cell) + np.float32(ox)
    grid = rng.random((int(y[-1]) + 2, int(x[-1]) + 2), dtype=np.float32)
    fy = np.floor(y)
    fx = np.floor(x)
    iy = fy.astype(np.intp)
    ix = fx.astype(np.intp)
    ty = _smoothstep(y - fy)[:, None]
    tx = _smoothstep(x - fx)[None, :]
    rows = grid[:, ix] * (1.0 - tx) + grid[:, ix + 1] * tx  # (gh, w)
    return rows[iy] * (1.0 - ty) + rows[iy + 1] * ty


def _fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Fractal value noise in [0, 1] (octaves halve the cell size)."""
    total = np.zeros((h, w), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amp * _value_noise(rng, h, w, cell)
        norm += amp
        amp *= gain
        cell /= 2.0
    return total / norm


def _blur3(a: np.ndarray) -> np.ndarray:
    """3x3 binomial blur ([1, 2, 1] / 4 separable), edges replicated, over the first two axes."""
    p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    v = 0.25 * (p[:-2] + p[2:]) + 0.5 * p[1:-1]
    return 0.25 * (v[:, :-2] + v[:, 2:]) + 0.5 * v[:, 1:-1]


def _splat(h: int, w: int, ys: np.ndarray, xs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bilinear splat of weighted points into an (h, w) map (points off the image are dropped)."""
    iy = np.floor(ys).astype(np.intp)
    ix = np.floor(xs).astype(np.intp)
    fy = ys - iy
    fx = xs - ix
    idx, wts = [], []
    for dy, dx, wt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        py, px = iy + dy, ix + dx
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        idx.append((py * w + px)[ok])
        wts.append((wt * weights)[ok])
    flat = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=h * w)
    return flat.reshape(h, w).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# image layers


def _skin(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Skin RGB image (h, w, 3) and its luminance factor (h, w, 1) (shading and texture, ~1)."""
    t = _u(rng, 0.0, len(_SKIN_TONES) - 1.0)
    i = min(int(t), len(_SKIN_TONES) - 2)
    f = t - i
    tone = (1 - f) * _SKIN_TONES[i] + f * _SKIN_TONES[i + 1]
    tone = np.clip(tone + rng.uniform(-0.03, 0.03, 3).astype(np.float32), 0.0, 1.0)

    # Low-frequency illumination / skin shading, plus a weak linear gradient.
    shade = 1.0 + _u(rng, 0.06, 0.20) * (_fbm(rng, h, w, 0.6 * h, octaves=2) - 0.5) * 2.0
    gy, gx = rng.uniform(-1.0, 1.0, 2) * _u(rng, 0.0, 0.08)
    ramp_y = (np.arange(h, dtype=np.float32)[:, None] / np.float32(h) - np.float32(0.5)) * np.float32(gy)
    ramp_x = (np.arange(w, dtype=np.float32)[None, :] / np.float32(w) - np.float32(0.5)) * np.float32(gx)
    shade = shade + ramp_y + ramp_x
    # Mottled mid-scale texture, partly tinted (redness varies more than the other channels).
    mottle = (_fbm(rng, h, w, _u(rng, 10.0, 24.0), octaves=3) - 0.5) * _u(rng, 0.06, 0.16)
    redness = (_value_noise(rng, h, w, _u(rng, 30.0, 80.0)) - 0.5) * _u(rng, 0.0, 0.10)
    # Skin lines: thin ridges of a fine noise field.
    ridge = np.clip(1.0 - np.abs(_value_noise(rng, h, w, _u(rng, 5.0, 10.0)) - 0.5) / 0.06, 0.0, 1.0)
    lines = ridge * _u(rng, 0.0, 0.05)
    fine = (_blur3(_tri_noise(rng, (h, w))) - 0.5) * _u(rng, 0.08, 0.16)

    lum = (shade * (1.0 + mottle + fine + lines))[:, :, None]
    tint = np.stack([redness * 0.3, -redness, -0.6 * redness], axis=-1)
    return lum * (tone + tint), lum


def _radial_field(rng, yy, xx, cy, cx, radius, aspect, irregularity, kmax):
    """Signed field ``radius * r(theta) - rho`` (about a distance in pixels; > 0 inside) of a
    rotated ellipse whose radius is perturbed by a random Fourier series in the polar angle.

    cos(k theta) and sin(k theta) come from the Chebyshev recurrences on cos(theta) = u / rho and
    sin(theta) = v / rho, so only arithmetic and sqrt touch the pixel grid.
    """
    c, s = rng.uniform(-1.0, 1.0, 2).tolist()
    norm = math.sqrt(c * c + s * s) + 1e-12
    c, s = c / norm, s / norm
    dy = yy - cy
    dx = xx - cx
    u = dx * c + dy * s
    v = (dy * c - dx * s) / aspect
    rho = np.sqrt(u * u + v * v) + 1e-9
    cos1 = u / rho
    sin1 = v / rho

    ks = np.arange(2, kmax + 1)
    coef = rng.uniform(-1.0, 1.0, (len(ks), 2)) / ks[:, None] ** _u(rng, 0.6, 1.4)
    coef = _q(coef * (irregularity / np.abs(coef).sum())).tolist()  # sum |coef| ~ irregularity < 1: r(theta) > 0

    # k = 1 and k = 0 terms for the recurrence.
    cprev, sprev = np.ones_like(cos1), np.zeros_like(sin1)
    ccur, scur = cos1, sin1
    radial = np.ones_like(rho)
    two_cos = 2.0 * cos1
    for j, _k in enumerate(ks):
        cnext = two_cos * ccur - cprev
        snext = two_cos * scur - sprev
        radial += coef[j][0] * cnext + coef[j][1] * snext
        cprev, sprev, ccur, scur = ccur, scur, cnext, snext
    return radius * radial - rho


def _lesion_alpha(rng, h, w, yy, xx):
    """Soft lesion opacity ``alpha`` in [0, 1], normalised depth, and the nominal radius in pixels.

    Redraws (from the same generator, so still deterministic) until the mask ``alpha >= 0.5`` covers
    between 0.5 % and 90 % of the image.
    """
    short = float(min(h, w))
    for attempt in range(20):
        # Size: log-uniform from small to large. Large lesions run off the image.
        radius = _q(short * math.exp(_u(rng, math.log(0.14), math.log(0.68))))
        off = _u(rng, 0.0, 0.22 + 0.15 * (attempt == 0))
        oy, ox = rng.uniform(-1.0, 1.0, 2).tolist()
        cy = h / 2.0 + off * h * oy
        cx = w / 2.0 + off * w * ox
        aspect = _u(rng, 0.55, 1.0)
        irregularity = _u(rng, 0.08, 0.45)
        field = _radial_field(rng, yy, xx, cy, cx, radius, aspect, irregularity, int(rng.integers(5, 11)))

        # Satellite blobs joined to the main one (union = max of the signed fields).
        for _ in range(int(rng.choice([0, 0, 0, 1, 1, 2]))):
            a, b = rng.uniform(-1.0, 1.0, 2).tolist()
            n = math.sqrt(a * a + b * b) + 1e-12
            dist = radius * _u(rng, 0.5, 0.95)
            sy, sx = cy + dist * a / n, cx + dist * b / n
            sr = radius * _u(rng, 0.3, 0.65)
            field = np.maximum(field, _radial_field(rng, yy, xx, sy, sx, sr, _u(rng, 0.5, 1.0), _u(rng, 0.1, 0.4), 6))

        # Fine fractal jitter of the border, proportional to the lesion size.
        jitter = _u(rng, 0.03, 0.14) * radius
        field = field + jitter * (_fbm(rng, h, w, _u(rng, 0.15, 0.4) * radius + 4.0, octaves=3) - 0.5) * 2.0

        # Soft border: width varies along the outline (some edges sharp, some very diffuse).
        width0 = _q(math.exp(_u(rng, math.log(1.5), math.log(14.0))))
        width = width0 * (0.3 + 1.4 * _value_noise(rng, h, w, _u(rng, 0.3, 0.8) * radius + 8.0))
        alpha = _smoothstep((field + width) / (2.0 * width))  # alpha = 0.5 exactly where field = 0

        fraction = np.count_nonzero(alpha >= 0.5) / float(h * w)
        if 0.005 <= fraction <= 0.90:
            break
    else:  # pragma: no cover - practically unreachable; keeps the non-empty / not-full guarantee
        radius = 0.25 * short
        field = radius - np.sqrt((yy - h / 2.0) ** 2 + (xx - w / 2.0) ** 2)
        alpha = _smoothstep(field / 8.0 + 0.5)
    depth = np.clip(field / (0.6 * radius), 0.0, 1.0)
    return alpha, depth, radius


def _paint_lesion(rng, skin, lum, alpha, depth, mask, radius):
    h, w = alpha.shape
    rim = _LIGHT_PIGMENTS[int(rng.integers(len(_LIGHT_PIGMENTS)))]
    core = _DARK_PIGMENTS[int(rng.integers(len(_DARK_PIGMENTS)))]
    # Per-lesion colour jitter: brightness, and a little per channel.
    rim = np.clip(rim * _u(rng, 0.9, 1.1) * rng.uniform(0.95, 1.05, 3).astype(np.float32), 0.0, 1.0)
    core = np.clip(core * _u(rng, 0.85, 1.15) * rng.uniform(0.95, 1.05, 3).astype(np.float32), 0.0, 1.0)

    # Mix rim -> core colour by depth (darker centre, to a varying degree) and by blotchy noise.
    blotch = _fbm(rng, h, w, _u(rng, 0.3, 0.9) * radius + 6.0, octaves=3)
    centre_weight = _u(rng, 0.0, 1.0)
    mix = np.clip(centre_weight * depth + (1.0 - centre_weight) * 0.5 + 1.4 * (blotch - 0.5), 0.0, 1.0)
    mix = mix + _u(rng, -0.8, 0.8) * (mix * mix - mix)  # gamma-like bend, stays in [0, 1]
    colour = rim + (core - rim) * mix[:, :, None]

    # Bluish-grey areas (some lesions).
    if rng.random() < 0.25:
        blue = _BLUE_GREYS[int(rng.integers(len(_BLUE_GREYS)))]
        patch = _fbm(rng, h, w, _u(rng, 0.4, 1.0) * radius + 6.0, octaves=3)
        patch = _smoothstep((patch - _u(rng, 0.48, 0.62)) / 0.15)
        colour = colour + (blue - colour) * (patch * _u(rng, 0.4, 0.85))[:, :, None]

    # Internal texture, as a darkening factor: granular speckles, then a pigment network.
    texture = np.ones((h, w), dtype=np.float32)
    if rng.random() < 0.5:
        grain = _value_noise(rng, h, w, _u(rng, 2.5, 4.5))
        speckle = _blur3(_smoothstep((grain - _u(rng, 0.58, 0.75)) / 0.12))
        texture -= _u(rng, 0.10, 0.35) * speckle
    if rng.random() < 0.6:
        net = 0.8 * _value_noise(rng, h, w, _u(rng, 4.0, 8.0)) + 0.2 * _value_noise(rng, h, w, 2.5)
        lines = _blur3(np.clip(1.0 - np.abs(net - 0.5) / _u(rng, 0.07, 0.14), 0.0, 1.0))
        texture -= _u(rng, 0.10, 0.30) * lines * _value_noise(rng, h, w, 0.5 * radius + 6.0)
    mottle = _fbm(rng, h, w, _u(rng, 4.0, 10.0), octaves=2)
    texture *= 1.0 + _u(rng, 0.05, 0.25) * (mottle - 0.5) * 2.0
    colour = colour * (lum * texture[:, :, None])

    # Contrast: how far the lesion colour goes from the skin. Some lesions are faint.
    contrast = _u(rng, 0.25, 0.6) if rng.random() < 0.3 else _u(rng, 0.6, 1.0)
    strength = alpha * contrast
    # Pale regression patch: locally less pigment.
    if rng.random() < 0.25:
        pale = _fbm(rng, h, w, _u(rng, 0.5, 1.2) * radius + 6.0, octaves=3)
        pale = _smoothstep((pale - _u(rng, 0.5, 0.65)) / 0.2)
        strength = strength * (1.0 - _u(rng, 0.3, 0.6) * pale)
    image = skin + (colour - skin) * strength[:, :, None]

    # Dots and globules: small dark blurred points at random lesion pixels.
    n_dots = int(rng.integers(0, 40)) if rng.random() < 0.4 else 0
    inside = np.flatnonzero(mask)
    if n_dots and inside.size:
        pick = inside[rng.integers(inside.size, size=n_dots)]
        ys = (pick // w).astype(np.float64) + rng.random(n_dots)
        xs = (pick % w).astype(np.float64) + rng.random(n_dots)
        dots = np.clip(_blur3(_splat(h, w, ys, xs, rng.uniform(0.4, 2.0, n_dots))), 0.0, 0.7)
        image = image + (core * 0.6 - image) * dots[:, :, None]
    return image


def _speckles(rng, image, h, w):
    """A few bright specular spots / air bubbles (common in contact dermoscopy)."""
    n = int(rng.integers(0, 15)) if rng.random() < 0.5 else 0
    if not n:
        return image
    ys = rng.random(n) * h
    xs = rng.random(n) * w
    spots = np.clip(_blur3(_splat(h, w, ys, xs, rng.uniform(0.5, 2.0, n))), 0.0, 0.6)
    return image + (0.97 - image) * spots[:, :, None]


def _hairs(rng, image, h, w):
    """Dark thin curved strokes: cubic Bezier curves splatted densely, then blurred once."""
    r = rng.random()
    if r < 0.3:
        count = 0
    elif r < 0.65:
        count = int(rng.integers(1, 6))
    elif r < 0.9:
        count = int(rng.integers(6, 16))
    else:
        count = int(rng.integers(16, 41))
    if not count:
        return image
    colour = _HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))]
    all_y, all_x, all_w = [], [], []
    spacing = 0.35
    for _ in range(count):
        p0 = np.array([_u(rng, -0.1, 1.1) * h, _u(rng, -0.1, 1.1) * w])
        d = rng.uniform(-1.0, 1.0, 2)
        d /= math.sqrt(d[0] * d[0] + d[1] * d[1]) + 1e-12
        length = _u(rng, 0.25, 1.3) * w
        nrm = np.array([-d[1], d[0]])
        p3 = p0 + length * d
        p1 = p0 + length * (0.33 * d + _u(rng, -0.35, 0.35) * nrm)
        p2 = p0 + length * (0.66 * d + _u(rng, -0.35, 0.35) * nrm)
        n = int(length / spacing) + 2
        t = np.linspace(0.0, 1.0, n)[:, None]
        mt = 1.0 - t
        pts = mt * mt * mt * p0 + 3 * mt * mt * t * p1 + 3 * mt * t * t * p2 + t * t * t * p3
        tang = 3 * mt * mt * (p1 - p0) + 6 * mt * t * (p2 - p1) + 3 * t * t * (p3 - p2)
        tang /= np.sqrt((tang**2).sum(axis=1, keepdims=True)) + 1e-12
        normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
        width = _u(rng, 0.5, 1.2) if rng.random() < 0.75 else _u(rng, 1.2, 2.4)
        opacity = _u(rng, 0.45, 0.9)
        # Actual spacing along the curve varies; weight each sample by its local step length.
        step = np.sqrt(((np.diff(pts, axis=0)) ** 2).sum(axis=1))
        step = np.concatenate([step, step[-1:]])
        strands = max(1, int(np.ceil(width / 0.8)))
        for j in range(strands):
            o = (j + 0.5) / strands - 0.5
            q = pts + normal * (o * width)
            all_y.append(q[:, 0])
            all_x.append(q[:, 1])
            all_w.append(step * opacity * width / strands)
    cover = _splat(h, w, np.concatenate(all_y), np.concatenate(all_x), np.concatenate(all_w))
    cover = np.clip(_blur3(np.clip(cover, 0.0, 1.0)) * 1.3, 0.0, 0.95)
    return image + (colour - image) * cover[:, :, None]


def _vignette(rng, image, h, w, yy, xx):
    """Dark circular rim of the dermatoscope lens plus a gentle radial falloff inside."""
    cy = h / 2.0 + _u(rng, -0.06, 0.06) * h
    cx = w / 2.0 + _u(rng, -0.05, 0.05) * w
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    half_diag = 0.5 * math.sqrt(h * h + w * w)
    falloff = 1.0 - _u(rng, 0.0, 0.25) * (dist / half_diag) ** 2
    image = image * falloff[:, :, None]
    if rng.random() < 0.15:  # no lens rim visible
        return image
    rim_radius = _u(rng, 0.74, 1.0) * half_diag
    soft = _u(rng, 4.0, 22.0)
    outside = _smoothstep((dist - rim_radius) / soft + 0.5)
    level = _u(rng, 0.12, 0.32)
    dark = level * (0.75 + 0.5 * _value_noise(rng, h, w, 40.0))
    tint = (np.array([1.0, 0.9, 0.9]) + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
    rim = dark[:, :, None] * tint
    return image + (rim - image) * outside[:, :, None]
