"""Text-to-image on this machine: the digits and shapes recipes, against Hugging Face ImageGPT.

For each data set, our recipe runs as a user runs it (``aigc run digits`` / ``aigc run shapes``, with
its time budget) and its evaluation report gives prompt adherence and samples/s. Then Hugging Face
``ImageGPTForCausalImageModeling`` of the same width and depth (random init) gets the same budget on
the same shards: the caption as prefix tokens (padded to a fixed length), then the pixels, with the
loss on the pixels only, the same AdamW settings and batch size. It samples with its KV cache,
restricted to pixel tokens, and is scored by the same classifier / checker.

    python benchmarks/images.py [--digits-minutes 4] [--shapes-minutes 10] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aigc.config import load_config
from aigc.data.pairs import read_sequences
from aigc.data.shards import open_split, read_manifest
from aigc.images import shapes
from aigc.images.evaluation import digit_classifier
from aigc.images.pixels import dequantise
from aigc.images.sources import DIGIT_WORDS
from aigc.tokenizer import load_tokenizer
from aigc.training.optim import build_optimizer, learning_rate


def run_ours(recipe: str, run_dir: Path, minutes: float) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aigc", "run", recipe, f"run.dir={run_dir}", f"train.max_minutes={minutes}"],
                   check=True, stdout=subprocess.DEVNULL)
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    report["wall_s"] = time.perf_counter() - started
    return report


def imagegpt(config, vocab: int, prefix: int, pixels: int):
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    m = config.model
    torch.manual_seed(config.seed)
    # ImageGPT's last vocabulary id is its start-of-sequence token; ours is the caption's end token instead
    hf = ImageGPTConfig(vocab_size=vocab + 1, n_positions=prefix + pixels, n_embd=m.n_embd,
                        n_layer=m.n_layer + (m.n_encoder_layer or m.n_layer), n_head=m.n_head, resid_pdrop=m.dropout,
                        embd_pdrop=m.dropout, attn_pdrop=0.0)
    return ImageGPTForCausalImageModeling(hf)


def sequences(pairs, prefix: int, pad: int) -> torch.Tensor:
    """Caption ids (left-padded to ``prefix``) followed by the pixel ids: (N, prefix + pixels)."""
    rows = []
    for src, tgt in pairs:
        caption = list(src[-prefix:])
        rows.append([pad] * (prefix - len(caption)) + caption + list(tgt[:-1]))
    return torch.tensor(np.array(rows, dtype=np.int64))


def train_hf(model, data: torch.Tensor, prefix: int, config, seconds: float) -> int:
    tc = config.train
    optimizer = build_optimizer(model, tc, torch.device("cpu"))
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    started, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tc, step, elapsed / seconds)
        batch = data[torch.randint(0, len(data), (tc.batch_size,), generator=generator)]
        logits = model(input_ids=batch[:, :-1]).logits[:, prefix - 1 :]
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, prefix:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    return step


@torch.inference_mode()
def sample_hf(model, captions: list[list[int]], prefix: int, pad: int, first_pixel: int, pixels: int, seed: int) -> np.ndarray:
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[pad] * (prefix - len(c)) + c for c in captions])
    out = model(input_ids=ids, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    drawn = []
    for _ in range(pixels):
        probs = logits[:, first_pixel:-1].float().softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator)
        drawn.append(token[:, 0])
        out = model(input_ids=token + first_pixel, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    return torch.stack(drawn, 1).numpy()


def run_hf(recipe: str, run_dir: Path, seconds: float, prompts: list[str], per_prompt: int) -> tuple[list, float, int]:
    """Train ImageGPT on our run's shards for ``seconds``; return (images per prompt, samples/s, steps)."""
    config = load_config(recipe, [f"run.dir={run_dir}"])
    manifest = read_manifest(run_dir / "data")
    image, eot = manifest["image"], manifest["tokenizer"]["eot_id"]
    data_dir = run_dir / "data"
    pairs = read_sequences(open_split(data_dir, "train.src", manifest), open_split(data_dir, "train.tgt", manifest), eot)
    prefix = max(len(s) for s, _ in pairs)
    pad, pixels = eot, image["size"] ** 2
    model = imagegpt(config, image["vocab_size"], prefix, pixels)
    steps = train_hf(model, sequences(pairs, prefix, pad), prefix, config, seconds)
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    captions = [tokenizer.encode(p, add_special_tokens=False).ids + [eot] for p in prompts for _ in range(per_prompt)]
    started = time.perf_counter()
    tokens = sample_hf(model, captions, prefix, pad, image["pixel_offset"], pixels, config.seed)
    rate = len(captions) / (time.perf_counter() - started)
    palette = np.array(image["palette"], dtype=np.uint8)
    images = [dequantise(row, palette, image["size"]) for row in tokens]
    return [images[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))], rate, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits-minutes", type=float, default=4.0)
    parser.add_argument("--shapes-minutes", type=float, default=10.0)
    parser.add_argument("--skip-hf", action="store_true", help="only our recipes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aigc-images-"))
    rows = []

    digits = run_ours("digits", work / "digits", args.digits_minutes)
    rows.append(("digits adherence", f"{digits['adherence']:.1%}", f"ceiling {digits['classifier_real_accuracy']:.1%}"))
    rows.append(("digits samples/s", f"{digits['samples_per_s']:.1f}", ""))
    print(f"digits done in {digits['wall_s']:.0f} s", flush=True)
    shapes_report = run_ours("shapes", work / "shapes", args.shapes_minutes)
    rows.append(("shapes adherence, seen", f"{shapes_report['adherence_seen']:.1%}", ""))
    rows.append(("shapes adherence, held-out", f"{shapes_report['adherence_heldout']:.1%}", ""))
    rows.append(("shapes samples/s", f"{shapes_report['samples_per_s']:.1f}", ""))
    print(f"shapes done in {shapes_report['wall_s']:.0f} s", flush=True)

    if not args.skip_hf:
        per_prompt = 16
        prompts = [f"the digit {w}" for w in DIGIT_WORDS]
        drawn, rate, steps = run_hf("digits", work / "digits", args.digits_minutes * 60, prompts, per_prompt)
        classifier, _ = digit_classifier(8)
        features = np.stack([img[:, :, 0].reshape(-1) / 255 for group in drawn for img in group])
        hf_digits = float((classifier.predict(features) == np.repeat(np.arange(10), per_prompt)).mean())
        rows[0] += (f"{hf_digits:.1%}",)
        rows[1] += (f"{rate:.1f}",)
        shape_prompts = [s["prompt"] for s in shapes_report["samples"][:-1]]
        drawn, rate, steps = run_hf("shapes", work / "shapes", args.shapes_minutes * 60, shape_prompts, 8)
        scores = [np.mean([shapes.check(img, shapes.parse(p))["all"] for img in group]) for p, group in zip(shape_prompts, drawn)]
        half = shapes_report["prompts_seen"]
        rows[2] += (f"{np.mean(scores[:half]):.1%}",)
        rows[3] += (f"{np.mean(scores[half:]):.1%}",)
        rows[4] += (f"{rate:.1f}",)

    print(f"\n| {'':<28} | {'aigc':>14} | {'note':>16} | {'HF ImageGPT':>12} |")
    print(f"|{'-' * 30}|{'-' * 16}|{'-' * 18}|{'-' * 14}|")
    for row in rows:
        print(f"| {row[0]:<28} | {row[1]:>14} | {row[2]:>16} | {row[3] if len(row) > 3 else '-':>12} |")
    print("\ntargets: digits adherence >= 95%; shapes held-out adherence >= 90%")


if __name__ == "__main__":
    main()
