"""Captioned images from the built-in sources (``digits``, ``shapes``) and from users' folders.

Folders: every readable image under a folder, captioned by a ``captions.jsonl`` in that folder
(one ``{"file": "relative/path.png", "text": "a caption"}`` per line) or, without one, by the name of
the sub-folder an image sits in (``cats/001.jpg`` -> "cats"). Files that are not images, or that
Pillow cannot read, are skipped and counted in the cleaning report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from aigc.config import DataConfig
from aigc.data.clean import CleaningReport
from aigc.data.sources import SourceFile
from aigc.errors import DataError
from aigc.tasks.images import shapes
from aigc.tasks.images.pixels import resize

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("the digit {word}", "a handwritten {n}", "number {n}")
CAPTIONS_FILE = "captions.jsonl"


@dataclass(frozen=True)
class ImageRecord:
    caption: str
    image: np.ndarray  # (S, S, 3) uint8
    key: str  # stable identity for the split hash
    split: str | None = None  # a forced split ("heldout" for held-out shape combinations)
    label: int | None = None  # digits: the digit


def digit_caption(digit: int, variant: int) -> str:
    return DIGIT_TEMPLATES[variant % len(DIGIT_TEMPLATES)].format(word=DIGIT_WORDS[digit], n=digit)


def digits(side: int) -> Iterator[ImageRecord]:
    """scikit-learn's 1,797 8x8 handwritten digits (ink 0-16 -> grey 0-255), captions from three templates."""
    from sklearn.datasets import load_digits

    data = load_digits()
    for i, (pixels, digit) in enumerate(zip(data.images, data.target)):
        grey = np.round(pixels * (255 / 16)).astype(np.uint8)
        image = np.repeat(grey[:, :, None], 3, axis=2)
        if side != 8:
            image = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)
        yield ImageRecord(digit_caption(int(digit), i), image, f"digits:{i}", label=int(digit))


def shape_scenes(side: int) -> Iterator[ImageRecord]:
    for i, scene in enumerate(shapes.all_scenes(side)):
        yield ImageRecord(shapes.caption(scene, side), shapes.render(scene, side), f"shapes:{i}",
                          "heldout" if shapes.held_out(scene) else None)


def _captions(folder: Path) -> dict[Path, str] | None:
    path = folder / CAPTIONS_FILE
    if not path.is_file():
        return None
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            captions[(folder / entry["file"]).resolve()] = str(entry["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{number}: each line must be {{\"file\": ..., \"text\": ...}} ({err})") from None
    return captions


def folder_images(sources: list[SourceFile], config: DataConfig, report: CleaningReport) -> Iterator[ImageRecord]:
    """Images of ``data.paths`` with their captions; unreadable files are tallied in ``report``."""
    roots = [Path(p).expanduser().resolve() for p in config.paths if Path(p).expanduser().is_dir()]
    caption_files = {root: _captions(root) for root in roots}
    for source in sources:
        path = source.path.resolve()
        if path.name == CAPTIONS_FILE:
            continue
        root = next((r for r in roots if r in path.parents), path.parent)
        captions = caption_files.get(root)
        relative = path.relative_to(root)
        if captions is not None:
            text = captions.get(path)
        else:
            text = relative.parent.as_posix().replace("/", " ").replace("_", " ") if relative.parent.parts else None
        try:
            with Image.open(path) as opened:
                image = resize(opened, config.image_size)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            report.drop("not_an_image", str(path), path.stat().st_size, type(err).__name__)
            continue
        if not text:
            report.drop("no_caption", str(path), path.stat().st_size)
            continue
        report.keep(path.stat().st_size)
        yield ImageRecord(text, image, str(relative))


def no_caption_help(report: CleaningReport) -> str:
    """What to do when a folder's images have no captions."""
    if "no_caption" not in report.dropped:
        return ""
    return (f"\n{report.dropped['no_caption'].count} image(s) have no caption. Add a {CAPTIONS_FILE} beside them with "
            'one line per image, {"file": "img001.png", "text": "a red apple"}, or put the images in sub-folders '
            "named by their caption (apples/img001.png -> \"apples\").")


def image_records(sources: list[SourceFile], config: DataConfig, report: CleaningReport) -> Iterator[ImageRecord]:
    """Every captioned image of ``data.builtin`` (digits, shapes) and ``data.paths``."""
    builtin = {"digits": digits, "shapes": shape_scenes}
    for name in config.builtin:
        for record in builtin[name](config.image_size) if name in builtin else ():
            report.keep(record.image.nbytes)
            yield record
    if config.paths:
        yield from folder_images(sources, config, report)
