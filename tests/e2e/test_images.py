"""The digits recipe end to end (a tiny budget), image generation from the CLI, and the images API."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import openai
import pytest
from PIL import Image
from tokenizers import Tokenizer

from aigc.data.pairs import split_pairs
from aigc.data.shards import read_manifest
from aigc.tasks import load_generator
from aigc.tasks.caption_prefix import bits_per_token
from aigc.tasks.images.evaluation import NOVEL_PROMPT
from tests.conftest import FIXED_STEPS
from tests.e2e.helpers import Server, aigc

TINY_DIGITS = [*FIXED_STEPS, "model.n_layer=2", "model.n_embd=64", "model.dropout=0", "train.max_steps=250",
               "train.batch_size=32", "train.eval_every=250", "train.checkpoint_every=250", "eval.samples_per_prompt=20",
               "generate.guidance=3"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits") / "digits"
    done = aigc("run", "digits", f"run.dir={run_dir}", *TINY_DIGITS)
    return run_dir, done


def test_digits_run_writes_pngs_and_a_report_above_chance(digits_run):
    run_dir, done = digits_run
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    # Thresholds from this run (250 steps, seed 1337, 20 samples a digit at guidance 3), measured values in the
    # messages. Adherence: chance is one digit in ten (0.10, 0.02 standard deviation over 200 samples).
    assert report["adherence"] >= 0.17, f"adherence {report['adherence']:.3f}; measured 0.27, chance 0.10"
    assert report["classifier_real_accuracy"] > 0.9
    # each pixel's own frequencies in the training images (no context) give 2.36 bits; uniform over 16 greys 4
    assert report["bits_per_pixel"] < 2.1, f"{report['bits_per_pixel']:.3f} bits/pixel; measured 1.88"
    # no copying and no collapse: no sample is a training image, samples are no nearer the training images than
    # real test digits are (0.227 against 0.129; noise is about 0.5), and they differ like real digits do
    samples = 10 * 20
    assert report["exact_training_copies"] <= samples // 100, report["exact_training_copies"]
    assert report["real_nearest_training_distance"] < report["nearest_training_distance"] < 0.3, report
    assert report["sample_diversity"] > report["real_diversity"] / 2, (report["sample_diversity"], 0.36)
    grids = sorted((run_dir / "eval" / "samples").glob("*.png"))
    assert len(grids) == 11 and Image.open(grids[0]).size[0] > 8  # ten digits and the novel prompt
    # the novel prompt's note counts the tokens the model reads (the caption prefix) that the tokenizer lacks
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    prefix = json.loads((run_dir / "checkpoints" / "latest" / "config.json").read_text())["model"]["image_prefix"]
    read = tokenizer.encode(NOVEL_PROMPT, add_special_tokens=False).ids[: prefix - 1]
    unknown = read.count(tokenizer.token_to_id("<|unk|>"))
    assert unknown > 0 and f" {unknown} unknown token(s)" in report["samples"][-1]["note"], report["samples"][-1]
    markdown = (run_dir / "eval" / "report.md").read_text()
    assert "![the digit zero](samples/prompt_00.png)" in markdown and "adherence" in done.stdout


def test_the_model_draws_from_the_caption(digits_run):
    """The test images are likelier under their own captions than under another image's: the model reads them.
    (Measured 0.038 bits/pixel apart; a checkpoint that had not yet learnt to read them, at step 74, 0.002.)"""
    run_dir = digits_run[0]
    data = run_dir / "data"
    pairs = split_pairs(data, read_manifest(data), "test")
    generator = load_generator(run_dir)
    own = bits_per_token(generator.model.eval(), pairs, generator.eot, generator.prefix)[0]
    captions = [caption for caption, _ in pairs]  # each image with the next caption that differs from its own
    other = [(next(c for c in captions[i + 1 :] + captions[:i] if not np.array_equal(c, own_caption)), image)
             for i, (own_caption, image) in enumerate(pairs)]
    swapped = bits_per_token(generator.model, other, generator.eot, generator.prefix)[0]
    assert swapped - own > 0.015, f"{own:.4f} bits/pixel with their captions, {swapped:.4f} with others'; " \
                                  "measured 1.880 and 1.917"


def test_generate_writes_a_grid_or_one_png_per_sample(digits_run, tmp_path):
    run_dir = digits_run[0]
    done = aigc("generate", str(run_dir), "--prompt", "the digit seven", "--n", "6", "--seed", "1", "--guidance", "2",
                "--out", str(tmp_path / "grid.png"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 6 * 8
    done = aigc("generate", str(run_dir), "--prompt", "the digit seven", "--n", "3", "--seed", "2",
                "--out", str(tmp_path / "each") + "/")
    assert done.returncode == 0 and len(done.stdout.split()) == 3
    assert all(Image.open(p).size == (8, 8) for p in (tmp_path / "each").glob("*.png"))
    missing = aigc("generate", str(run_dir), "--prompt", "the digit seven")
    assert missing.returncode == 2 and "--out" in missing.stderr and "Traceback" not in missing.stderr


def test_images_api_with_the_openai_client(digits_run):
    server = Server([digits_run[0]])
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        result = client.images.generate(model="digits", prompt="the digit three", n=2, size="64x64",
                                        response_format="b64_json", extra_body={"seed": 3})
        pictures = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
        assert len(pictures) == 2 and pictures[0].size == (64, 64)
        with pytest.raises(openai.BadRequestError, match="multiple"):
            client.images.generate(model="digits", prompt="the digit three", size="30x30")
        with pytest.raises(openai.BadRequestError, match="image model"):
            client.completions.create(model="digits", prompt="x")
    finally:
        server.stop()


def test_digits_recipe_help_lists_image_keys():
    done = aigc("prepare", "--help")
    assert done.returncode == 0, done.stderr
    assert "data.image_size" in done.stdout and "train.condition_dropout" in done.stdout
