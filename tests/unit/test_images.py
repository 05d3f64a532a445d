"""Images as tokens: palettes, quantisation, the shapes renderer and checker, folders, and sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aigc.config import ModelConfig, load_config
from aigc.data.clean import CleaningReport
from aigc.data.sources import resolve_sources
from aigc.errors import DataError
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.models import GPT
from aigc.tasks.images import shapes
from aigc.tasks.images.model import PixelPositions
from aigc.tasks.images.pixels import dequantise, grey_palette, grid, kmeans_palette, quantise
from aigc.tasks.images.prepare import prepare_images
from aigc.tasks.images.sources import folder_images


def test_quantise_round_trip_and_grey_palette():
    palette = grey_palette(16)
    assert palette.shape == (16, 3) and palette[0].tolist() == [0, 0, 0] and palette[-1].tolist() == [255, 255, 255]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 16, 64)
    image = dequantise(tokens, palette, 8)
    assert image.shape == (8, 8, 3) and (quantise(image, palette) == tokens).all()
    noisy = np.clip(image.astype(int) + rng.integers(-5, 6, image.shape), 0, 255).astype(np.uint8)
    assert (quantise(noisy, palette) == tokens).all()  # nearest colour


def test_kmeans_palette_is_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5000, 3)).astype(np.uint8)
    a, b = kmeans_palette(pixels, 8, seed=3), kmeans_palette(pixels, 8, seed=3)
    assert a.shape == (8, 3) and (a == b).all()
    few = np.array([[0, 0, 0], [255, 0, 0]] * 50, dtype=np.uint8)
    assert kmeans_palette(few, 8, seed=0).tolist() == [[0, 0, 0], [255, 0, 0]]  # fewer colours than asked


@pytest.mark.parametrize("side, stride", [(16, 1), (32, 7)])
def test_shapes_checker_agrees_with_the_renderer(side, stride):
    scenes = shapes.all_scenes(side)[::stride]
    for scene in scenes:
        text = shapes.caption(scene, side)
        assert shapes.parse(text) == scene, text
        assert shapes.check(shapes.render(scene, side), scene)["all"], text
    red_circle = [shapes.Shape("circle", "red", "top left")]
    wrong = shapes.render([shapes.Shape("square", "blue", "bottom right")], 16)
    assert not any(v for k, v in shapes.check(wrong, red_circle).items())
    assert shapes.parse("a cat on a mat") is None


def test_held_out_combinations_never_reach_training(tmp_path):
    config = load_config("shapes", [f"run.dir={tmp_path / 'run'}"])
    manifest = prepare_images(config).manifest
    assert manifest["splits"]["heldout.src"]["documents"] == sum(shapes.held_out(s) for s in shapes.all_scenes(16))
    from aigc.data.pairs import read_sequences
    from aigc.data.shards import open_split
    from aigc.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    data = tmp_path / "run" / "data"
    train = read_sequences(open_split(data, "train.src", manifest), open_split(data, "train.tgt", manifest), 0)
    captions = {tokenizer.decode(s[:-1].tolist()) for s, _ in train}
    assert not any(shapes.held_out(shapes.parse(c)) for c in captions)
    assert len(manifest["image"]["palette"]) == 5  # black + four colours, found by k-means


def test_a_val_split_smaller_than_a_batch_is_evaluated_whole(tmp_path):
    from aigc.tasks.caption_prefix import prefix_samplers

    config = load_config("shapes", [f"run.dir={tmp_path / 'run'}"])
    manifest = prepare_images(config).manifest
    clips = manifest["splits"]["val.src"]["documents"]
    large = config.model_copy(update={"train": config.train.model_copy(update={"batch_size": clips + 7})})
    _, val = prefix_samplers(large, manifest, manifest["image"]["prefix"], 0, 1)
    (inputs,), targets = val.eval_batches(2)[0]  # every val image once, not "no evaluation"
    assert inputs.shape[0] == targets.shape[0] == clips and len(torch.unique(inputs, dim=0)) == clips


def test_folder_captions_unreadable_files_and_missing_captions(tmp_path):
    folder = tmp_path / "pics"
    for name, colour in (("apples", (200, 0, 0)), ("limes", (0, 200, 0))):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 12), colour).save(folder / name / f"{i}.png")
    (folder / "apples" / "notes.txt").write_text("not an image")
    (folder / "apples" / "broken.png").write_bytes(b"\x89PNG broken")
    config = load_config("digits", [f"data.paths=[{folder}]", "data.builtin=[]", "data.image_size=8"]).data
    report = CleaningReport()
    records = list(folder_images(resolve_sources(config), config, report))
    assert sorted({r.caption for r in records}) == ["apples", "limes"] and len(records) == 6
    assert records[0].image.shape == (8, 8, 3) and report.dropped["not_an_image"].count == 2
    (folder / "captions.jsonl").write_text(json.dumps({"file": "apples/0.png", "text": "a red apple"}) + "\n")
    report = CleaningReport()
    records = list(folder_images(resolve_sources(config), config, report))
    assert [r.caption for r in records] == ["a red apple"] and report.dropped["no_caption"].count == 5

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.png")
    with pytest.raises(DataError, match="captions.jsonl"):
        prepare_images(load_config("digits", [f"run.dir={tmp_path / 'run'}", f"data.paths=[{flat}]", "data.builtin=[]"]))


def test_block_size_grows_to_hold_a_caption_and_its_pixels(tmp_path):
    """The digits recipe's block size (96) holds an 8x8 digit and its caption; with data.image_size=16 the run's
    context becomes what a caption and its pixels need; a longer one is kept."""
    from aigc.tasks import task_for

    manifest = {"tokenizer": {"vocab_size": 40}, "image": {"size": 16, "palette": [[0, 0, 0], [255, 255, 255]],
                                                            "prefix": 18}}
    config = load_config("digits", [f"run.dir={tmp_path}", "data.image_size=16"])
    assert config.model.block_size == 96
    model = task_for(config).model_config(config, manifest).model
    assert model.block_size == 18 + 16 * 16 - 1 and model.image_size == 16 and model.image_prefix == 18
    roomy = load_config("digits", [f"run.dir={tmp_path}", "model.block_size=400"])
    assert task_for(roomy).model_config(roomy, manifest).model.block_size == 400


def image_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=20, norm="rmsnorm", mlp="swiglu",
                            position="rope", bias=False, image_size=4, image_colors=6, image_prefix=5), PixelPositions)
    return model.eval()


def reference(model: GPT, prefix: list[int], params: SamplingParams, seed: int, first: int = 14) -> list[int]:
    """Uncached sampling: the whole sequence re-run each step, with the generator the engine gives row 0."""
    from aigc.generate.sampling import choose

    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(16):
            logits = model(torch.tensor([[*prefix, *[t + first for t in out]]]))
            out.append(int(choose(logits[:, -1, first:].float(), params, [generator])))
    return out


def test_cached_and_uncached_sampling_identical_and_guidance_endpoints():
    model = image_model()
    engine = Engine(model)
    params = SamplingParams(temperature=1.0, seed=5)
    prefix, blank = [0, 3, 4, 5, 0], [0] * 5
    drawn = engine.draw([prefix], blank, length=16, first_id=14, params=params)[0].tolist()
    assert drawn == reference(model, prefix, params, seed=5)
    assert engine.draw([prefix], blank, 16, 14, params, guidance=1.0)[0].tolist() == drawn  # scale 1 = unguided
    unconditional = engine.draw([prefix], blank, 16, 14, params, guidance=0.0)[0].tolist()
    assert unconditional == reference(model, blank, params, seed=5)  # scale 0 = the caption-free model
    assert engine.draw([prefix], blank, 16, 14, params, guidance=4.0)[0].tolist() != drawn
    assert all(0 <= t < 6 for t in drawn)


def test_pixel_positions_only_on_pixels():
    model = image_model()
    positions = torch.arange(24)
    extra = model.extras(positions)
    assert (extra[:4] == 0).all() and (extra[4:] != 0).any(dim=-1).all()  # position 4 predicts the first pixel


def test_grid_layout():
    sheet = grid([np.zeros((4, 4, 3), np.uint8)] * 5, columns=4, scale=2, gap=1)
    assert sheet.shape == (2 * (8 + 1) + 1, 4 * (8 + 1) + 1, 3)
