"""Pixels as tokens: palettes, quantisation and back, PNG files and sample grids.

An image of side S becomes S*S tokens in raster order (row by row), each the index of the nearest
palette colour. A palette is K RGB colours: K evenly spaced grey levels, or the K centres of a
k-means fit on training pixels (as in Image GPT), deterministic for a seed.

Shapes: images are uint8 arrays (S, S, 3); token grids are int arrays (S*S,); palettes (K, 3) uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def grey_palette(levels: int) -> np.ndarray:
    """``levels`` grey levels from black to white, (K, 3) uint8."""
    ramp = np.round(np.linspace(0, 255, levels)).astype(np.uint8)
    return np.repeat(ramp[:, None], 3, axis=1)


def kmeans_palette(pixels: np.ndarray, colors: int, seed: int, max_pixels: int = 200_000) -> np.ndarray:
    """K-means colour centres of (N, 3) pixels (a seeded sample of at most ``max_pixels``), sorted by brightness."""
    from sklearn.cluster import KMeans

    pixels = pixels.reshape(-1, 3).astype(np.float32)
    rng = np.random.default_rng(seed)
    if len(pixels) > max_pixels:
        pixels = pixels[rng.choice(len(pixels), max_pixels, replace=False)]
    distinct = np.unique(pixels, axis=0)
    if len(distinct) <= colors:  # fewer colours than asked: they are the palette
        centres = distinct
    else:
        centres = KMeans(n_clusters=colors, random_state=seed, n_init=4).fit(pixels).cluster_centers_
    centres = np.clip(np.round(centres), 0, 255).astype(np.uint8)
    return centres[np.argsort(centres.astype(int).sum(1), kind="stable")]


def quantise(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (S*S,) token ids: the nearest palette colour of each pixel."""
    flat = image.reshape(-1, 3).astype(np.int32)
    distances = ((flat[:, None, :] - palette[None, :, :].astype(np.int32)) ** 2).sum(-1)
    return distances.argmin(1).astype(np.int64)


def dequantise(tokens: np.ndarray, palette: np.ndarray, side: int) -> np.ndarray:
    """(S*S,) token ids -> (S, S, 3) uint8."""
    return palette[np.asarray(tokens)].reshape(side, side, 3)


def resize(image: Image.Image, side: int) -> np.ndarray:
    """Any Pillow image -> (side, side, 3) uint8: centre-cropped to a square, then resized (box filter)."""
    image = image.convert("RGB")
    w, h = image.size
    edge = min(w, h)
    box = ((w - edge) // 2, (h - edge) // 2, (w - edge) // 2 + edge, (h - edge) // 2 + edge)
    return np.asarray(image.resize((side, side), Image.Resampling.BOX, box=box), dtype=np.uint8)


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of (S, S, 3) for viewing: every pixel becomes a scale x scale block."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def grid(images: list[np.ndarray], columns: int = 8, scale: int = 4, gap: int = 2) -> np.ndarray:
    """Many (S, S, 3) images in one (rows, columns) sheet, upscaled, with white gaps."""
    if not images:
        raise ValueError("no images to put in a grid")
    side = images[0].shape[0] * scale
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.full((rows * (side + gap) + gap, columns * (side + gap) + gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = gap + r * (side + gap), gap + c * (side + gap)
        sheet[top : top + side, left : left + side] = upscale(image, scale)
    return sheet


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write (H, W, 3) uint8 as a PNG (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(path, format="PNG")
    return path
