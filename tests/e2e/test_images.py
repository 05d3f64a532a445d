"""The digits recipe end to end (a tiny budget), image generation from the CLI, and the images API."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import openai
import pytest
from PIL import Image

from tests.e2e.test_run import aigc
from tests.e2e.test_serve import Server

TINY_DIGITS = ["model.n_layer=2", "model.n_embd=64", "model.dropout=0", "train.max_steps=250",
               "train.batch_size=32", "train.eval_every=250", "train.checkpoint_every=250", "eval.samples_per_prompt=10",
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
    assert report["adherence"] > 0.10, report["adherence"]  # chance is one digit in ten
    assert report["classifier_real_accuracy"] > 0.9 and 0 < report["bits_per_pixel"] < 4
    assert report["exact_training_copies"] >= 0 and report["sample_diversity"] > 0
    grids = sorted((run_dir / "eval" / "samples").glob("*.png"))
    assert len(grids) == 11 and Image.open(grids[0]).size[0] > 8  # ten digits and the novel prompt
    assert "unknown" in report["samples"][-1]["note"] or "never seen" in report["samples"][-1]["note"]
    markdown = (run_dir / "eval" / "report.md").read_text()
    assert "![the digit zero](samples/prompt_00.png)" in markdown and "adherence" in done.stdout


def test_generate_writes_a_grid_or_one_png_per_sample(digits_run, tmp_path):
    run_dir = digits_run[0]
    done = aigc("generate", str(run_dir), "--prompt", "the digit seven", "--n", "6", "--seed", "1", "--guidance", "2",
                "--out", str(tmp_path / "grid.png"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "grid.png").size[0] > 6 * 8
    done = aigc("generate", str(run_dir), "--prompt", "the digit seven", "--n", "3", "--out", str(tmp_path / "each") + "/")
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
    done = subprocess.run([sys.executable, "-m", "aigc", "prepare", "--help"], capture_output=True, text=True, timeout=60)
    assert "data.image_size" in done.stdout and "train.condition_dropout" in done.stdout
