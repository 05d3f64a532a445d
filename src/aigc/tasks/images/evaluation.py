"""Evaluation of an image run: likelihood, prompt adherence, diversity, memorisation, sample grids.

- bits per pixel: the model's negative log-likelihood of the test images' pixel tokens, in bits;
- adherence: digits, the share of samples that a classifier trained on real digits (an SVC) assigns to
  the asked digit, printed beside that classifier's accuracy on real held-out digits (the ceiling);
  shapes, the share of samples whose pixels show every attribute of the prompt (colour, kind,
  position, size), on seen and on held-out attribute combinations, and over both;
- diversity: the mean distance between two samples of one prompt, beside the same figure for real
  images of one digit (a model that always draws the same picture scores 0);
- memorisation: samples identical to a training image, and the mean distance from a sample to its
  nearest training image beside the same for real test images (much smaller means copying).
Distances are root-mean-square pixel differences on a 0-1 scale.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigc.data.pairs import split_pairs
from aigc.generate.sampling import SamplingParams
from aigc.tasks.caption_prefix import bits_per_token
from aigc.tasks.images import shapes
from aigc.tasks.images.generator import ImageGenerator
from aigc.tasks.images.pixels import dequantise, grid, quantise, save_png
from aigc.tasks.images.sources import DIGIT_WORDS, digits

NOVEL_PROMPT = "a purple hexagon drawn in chalk"  # words the captions never use: the report shows what happens


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float32) / 255 - b.astype(np.float32) / 255) ** 2)))


def diversity(images: list[np.ndarray]) -> float:
    """Mean pairwise distance between the images (0 when they are all the same)."""
    pairs = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))]
    return float(np.mean([_distance(images[i], images[j]) for i, j in pairs])) if pairs else 0.0


def nearest(images: list[np.ndarray], training: np.ndarray) -> np.ndarray:
    """Distance from each image to its nearest training image; training is (N, S, S, 3)."""
    train = training.reshape(len(training), -1).astype(np.float32) / 255
    return np.array([np.sqrt(((train - img.reshape(1, -1).astype(np.float32) / 255) ** 2).mean(1)).min() for img in images])


def digit_classifier(side: int):
    """An SVC trained on real digits (first 1,000), and its accuracy on the rest (the adherence ceiling)."""
    from sklearn.svm import SVC

    records = list(digits(side))
    features = np.stack([r.image[:, :, 0].reshape(-1) / 255 for r in records])
    labels = np.array([r.label for r in records])
    classifier = SVC(gamma="scale", C=10).fit(features[:1000], labels[:1000])
    return classifier, float((classifier.predict(features[1000:]) == labels[1000:]).mean())


class Judge:
    """Which prompts an image run is evaluated on, and how its samples are judged: a user's folder of images.

    Built-in sources have their own judges (:data:`JUDGES`), chosen by the name in ``data.builtin``.
    """

    judges_adherence: ClassVar[bool] = False  # whether :meth:`score` reports "adherence" (what aigc tune can use)

    def prompts(self, test: list[str], heldout: list[str]) -> list[str]:
        """Prompts to sample, from the captions of the test and held-out splits."""
        return sorted(set(test))[:8]

    def score(self, prompts: list[str], samples: list[list[np.ndarray]], side: int, per_prompt: int) -> dict[str, Any]:
        """Adherence metrics of ``samples`` (one group per prompt); none for a folder: nothing knows its captions."""
        return {}


class DigitJudge(Judge):
    """Each digit once; adherence by an SVC trained on real digits, beside its accuracy on real held-out digits."""

    judges_adherence = True

    def prompts(self, test: list[str], heldout: list[str]) -> list[str]:
        return [f"the digit {word}" for word in DIGIT_WORDS]

    def score(self, prompts: list[str], samples: list[list[np.ndarray]], side: int, per_prompt: int) -> dict[str, Any]:
        classifier, ceiling = digit_classifier(side)
        features = np.stack([img[:, :, 0].reshape(-1) / 255 for group in samples for img in group])
        asked = np.repeat(np.arange(10), per_prompt)
        real_by_digit: dict[int, list[np.ndarray]] = {}
        for record in digits(side):
            real_by_digit.setdefault(record.label, []).append(record.image)
        return {"adherence": float((classifier.predict(features) == asked).mean()), "classifier_real_accuracy": ceiling,
                "real_diversity": float(np.mean([diversity(v[:per_prompt]) for v in real_by_digit.values()]))}


class ShapeJudge(Judge):
    """Seen and held-out attribute combinations; adherence by the pixel checker (every attribute of the prompt)."""

    judges_adherence = True

    def prompts(self, test: list[str], heldout: list[str]) -> list[str]:
        self.seen, self.held = sorted(set(test))[::7][:12], sorted(set(heldout))[::29][:12]
        return self.seen + self.held

    def score(self, prompts: list[str], samples: list[list[np.ndarray]], side: int, per_prompt: int) -> dict[str, Any]:
        scores = [np.mean([shapes.check(img, shapes.parse(prompt))["all"] for img in group])
                  for prompt, group in zip(prompts, samples)]
        seen = len(self.seen)
        return {"prompts_seen": seen, "adherence": float(np.mean(scores)),  # every prompt: what aigc tune can use
                "adherence_seen": float(np.mean(scores[:seen])) if seen else None,
                "adherence_heldout": float(np.mean(scores[seen:])) if self.held else None}


JUDGES = {"digits": DigitJudge, "shapes": ShapeJudge}


def judge_for(builtin: list[str]) -> Judge:
    """The judge of the one built-in source a run draws from; the folder judge otherwise."""
    return JUDGES.get(builtin[0], Judge)() if len(builtin) == 1 else Judge()


def evaluate_images(generator: ImageGenerator, run_dir: Path, manifest: dict, config, log=print) -> dict[str, Any]:
    data_dir, image = run_dir / "data", manifest["image"]
    palette, side, offset, eot = np.array(image["palette"], dtype=np.uint8), image["size"], image["pixel_offset"], generator.eot
    test = split_pairs(data_dir, manifest, "test") or split_pairs(data_dir, manifest, "val")
    bpp, scored = bits_per_token(generator.model, test, eot, generator.prefix) if test else (float("nan"), 0)
    train_pairs = split_pairs(data_dir, manifest, "train")
    training = np.stack([dequantise(t[:-1] - offset, palette, side) for _, t in train_pairs])
    train_keys = {(t[:-1].astype(np.int64) - offset).tobytes() for _, t in train_pairs}
    decode = generator.tokenizer.decode
    ec, gc = config.eval, config.generate
    params = SamplingParams(temperature=gc.temperature or 1.0, top_k=gc.top_k, seed=config.seed)
    report: dict[str, Any] = {"bits_per_pixel": bpp, "pixels_scored": scored, "guidance": gc.guidance}

    judge = judge_for(config.data.builtin)
    prompts = judge.prompts([decode(s[:-1].tolist()) for s, _ in test],
                            [decode(s[:-1].tolist()) for s, _ in split_pairs(data_dir, manifest, "heldout")])
    started = time.perf_counter()
    samples = generator.generate(prompts + [NOVEL_PROMPT], ec.samples_per_prompt, params, gc.guidance)
    report["samples_per_s"] = len(samples) * ec.samples_per_prompt / (time.perf_counter() - started)
    novel = samples.pop()
    flat = [img for group in samples for img in group]
    report["sample_diversity"] = float(np.mean([diversity(group) for group in samples]))
    report["exact_training_copies"] = sum(quantise(img, palette).tobytes() in train_keys for img in flat)
    report["nearest_training_distance"] = float(nearest(flat, training).mean())
    if test:
        real = [dequantise(t[:-1] - offset, palette, side) for _, t in test[:200]]
        report["real_nearest_training_distance"] = float(nearest(real, training).mean())
    report |= judge.score(prompts, samples, side, ec.samples_per_prompt)

    folder = run_dir / "eval" / "samples"
    report["samples"] = []
    for i, (prompt, group) in enumerate(zip([*prompts, NOVEL_PROMPT], [*samples, novel])):
        path = save_png(grid(group, columns=8, scale=max(1, 64 // side)), folder / f"prompt_{i:02d}.png")
        entry = {"prompt": prompt, "grid": str(path.relative_to(run_dir / "eval"))}
        if prompt == NOVEL_PROMPT:
            unknown = generator.encode(prompt)[1]
            entry["note"] = (f"words never seen in training captions; {unknown} unknown token(s) "
                             "(shown to see what the model does with them)")
        report["samples"].append(entry)
    return report
