"""Text-to-image on this machine: the digits and shapes recipes, against Hugging Face ImageGPT of the same shape.

For each data set, our recipe is prepared and trained as a user runs it (``aigc prepare`` and ``aigc
train digits`` / ``shapes``, with its time budget, evaluations and checkpoints included). Then Hugging
Face ``ImageGPTForCausalImageModeling`` (random init) of the same depth (``model.n_layer``), width,
heads and parameter count (its GELU feed-forward is 1.5x as wide as our SwiGLU one, which has three
matrices) gets the same budget on the same shards and the very same batches: our ``PrefixSampler``
with the recipe's seed and caption dropout (the caption as prefix tokens, left-padded, then the
pixels; the loss on the pixels only), the same AdamW settings, schedule, batch size and clipping.
Differences that remain: ours has rotary positions plus a row and a column embedding per pixel,
RMSNorm and SwiGLU; ImageGPT learned positions, its own norm and GELU.

Both draw the same number of samples per prompt (the recipe's ``eval.samples_per_prompt``) for the
same prompts (those of the recipe's evaluation), in batches of 64, with the KV cache, restricted to
pixel tokens, at the recipe's temperature, each with and without classifier-free guidance (guidance
1 is plain conditional sampling; the recipes' ``generate.guidance`` is 2). Both are scored by the
same judge (digits: an SVC trained on real digits; shapes: the pixel checker) and by bits per pixel
on the test images. A model whose test bits per pixel are not well below those of the pixel
frequencies alone (the unigram baseline), or whose unguided digits are not three times above chance,
has not learned: the table then says the comparison is void.

    python benchmarks/images.py [--digits-minutes 4] [--shapes-minutes 10] [--samples-per-prompt N] [--skip-hf]
    python benchmarks/images.py --quick          # smoke run: 0.2 minutes each, 2 samples per prompt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from aigc.tasks.images.sampler import PrefixSampler
from loadwatch import LoadWatch  # benchmarks/loadwatch.py, beside this script

from aigc.config import load_config
from aigc.data.pairs import split_pairs, target_start
from aigc.data.shards import read_manifest
from aigc.generate.sampling import SamplingParams
from aigc.tasks.caption_prefix import bits_per_token
from aigc.tasks.images.evaluation import judge_for
from aigc.tasks.images.generator import ImageGenerator
from aigc.tasks.images.pixels import dequantise
from aigc.training.optim import build_optimizer, learning_rate

BATCH = 64  # images sampled together, as ImageGenerator does


def train_ours(recipe: str, run_dir: Path, minutes: float) -> float:
    """``aigc prepare`` and ``aigc train`` as a user runs them; the training wall time."""
    common = [recipe, f"run.dir={run_dir}", f"train.max_minutes={minutes}"]
    started = 0.0
    for stage in ("prepare", "train"):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "aigc", stage, *common], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"aigc {stage} {recipe} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def imagegpt(config, vocab: int, positions: int):
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    m = config.model
    torch.manual_seed(config.seed)
    # ImageGPT's last vocabulary id is its start-of-sequence token (unused: our caption's end token starts the pixels)
    inner = 3 * m.hidden // 2 if m.mlp == "swiglu" else m.hidden
    hf = ImageGPTConfig(vocab_size=vocab + 1, n_positions=positions, n_embd=m.n_embd, n_layer=m.n_layer,
                        n_head=m.n_head, n_inner=inner, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=0.0)
    return ImageGPTForCausalImageModeling(hf)


def train_hf(model, sampler: PrefixSampler, config, seconds: float) -> int:
    """Our trainer's step, on ImageGPT, for ``seconds``: the steps it made."""
    tc = config.train
    optimizer = build_optimizer(model, tc, torch.device("cpu"))
    torch.manual_seed(config.seed)  # dropout masks
    model.train()
    started, step = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tc, step, elapsed / seconds)
        batches = sampler.step_batches(step)
        for (inputs,), targets in batches:
            logits = model(input_ids=inputs).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1,
                                   label_smoothing=tc.label_smoothing)
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    model.eval()
    return step


@torch.inference_mode()
def sample_hf(model, prefixes: list[list[int]], blank: list[int], first_pixel: int, colors: int, pixels: int,
              params: SamplingParams, guidance: float) -> np.ndarray:
    """Pixels (palette indices) for each prefix, 64 at a time, with the KV cache; guidance as in our engine."""
    out = []
    for start in range(0, len(prefixes), BATCH):
        chunk = prefixes[start : start + BATCH]
        n, guided = len(chunk), guidance != 1.0
        generator = torch.Generator().manual_seed(params.seed + start)
        step = model(input_ids=torch.tensor(chunk + ([blank] * n if guided else [])), use_cache=True)
        drawn = []
        for i in range(pixels):
            logits = step.logits[:, -1, first_pixel : first_pixel + colors].float()
            if guided:
                logits = logits[n:] + guidance * (logits[:n] - logits[n:])
            token = torch.multinomial((logits / params.temperature).softmax(-1), 1, generator=generator)
            drawn.append(token[:, 0])
            if i < pixels - 1:
                step = model(input_ids=(token + first_pixel).repeat(2 if guided else 1, 1),
                             cache=step.cache, use_cache=True)
        out.append(torch.stack(drawn, 1))
    return torch.cat(out).numpy()


def unigram_bits(train_pairs, test_pairs, first_pixel: int, colors: int) -> float:
    """Bits per test pixel of the training pixels' colour frequencies alone (no caption, no neighbours)."""
    counts = np.bincount(np.concatenate([t[:-1] for _, t in train_pairs]).astype(np.int64) - first_pixel,
                         minlength=colors) + 1.0
    test = np.concatenate([t[:-1] for _, t in test_pairs]).astype(np.int64) - first_pixel
    return float(-np.log2(counts / counts.sum())[test].mean())


def compare(recipe: str, run_dir: Path, minutes: float, per_prompt: int | None, skip_hf: bool) -> dict:
    train_s = train_ours(recipe, run_dir, minutes)
    config = load_config(recipe, [f"run.dir={run_dir}"])
    data_dir = run_dir / "data"
    manifest = read_manifest(data_dir)
    image, eot = manifest["image"], target_start(manifest)
    generator = ImageGenerator.from_checkpoint(run_dir)  # the latest checkpoint: the end of the budget
    generator.model.eval()
    decode = generator.tokenizer.decode
    test = split_pairs(data_dir, manifest, "test") or split_pairs(data_dir, manifest, "val")
    train_pairs = split_pairs(data_dir, manifest, "train")
    judge = judge_for(config.data.builtin)
    prompts = judge.prompts([decode(s[:-1].tolist()) for s, _ in test],
                            [decode(s[:-1].tolist()) for s, _ in split_pairs(data_dir, manifest, "heldout")])
    per_prompt = per_prompt or config.eval.samples_per_prompt
    gc = config.generate
    params = SamplingParams(temperature=gc.temperature or 1.0, top_k=gc.top_k, seed=config.seed)
    guidances = [1.0, gc.guidance] if gc.guidance != 1.0 else [1.0]
    side, colors, first = image["size"], len(image["palette"]), image["pixel_offset"]
    result = {"recipe": recipe, "prompts": len(prompts), "per_prompt": per_prompt, "guidances": guidances,
              "unigram_bpp": unigram_bits(train_pairs, test, first, colors), "columns": {}}

    def column(name: str, params_count: int, steps: int | None, bpp: float, draw) -> None:
        for guidance in guidances:
            started = time.perf_counter()
            samples = draw(guidance)
            rate = len(prompts) * per_prompt / (time.perf_counter() - started)
            scores = judge.score(prompts, samples, side, per_prompt)
            result["columns"][f"{name}, g={guidance:g}"] = dict(scores, samples_per_s=rate, params=params_count,
                                                                steps=steps, bpp=bpp)

    bpp = bits_per_token(generator.model, test, eot, generator.prefix)[0]
    ours_steps = int((run_dir / "checkpoints" / "latest").resolve().name.split("_")[-1])
    column("aigc", generator.model.num_params(non_embedding=False), ours_steps, bpp,
           lambda g: generator.generate(prompts, per_prompt, params, g))
    result["train_s"] = train_s

    if not skip_hf:
        config = config.model_copy(update={"model": generator.model.config})  # with the data-set image fields
        sampler = PrefixSampler(train_pairs, eot, generator.prefix, config.train.batch_size, config.train.grad_accum,
                                config.seed, condition_dropout=config.train.condition_dropout)
        model = imagegpt(config, image["vocab_size"], generator.prefix + side * side)
        steps = train_hf(model, sampler, config, minutes * 60)
        bpp = bits_per_token(lambda x: model(input_ids=x).logits, test, eot, generator.prefix)[0]
        prefixes = [generator.encode(p)[0] for p in prompts for _ in range(per_prompt)]
        blank = [eot] * generator.prefix
        palette = np.array(image["palette"], dtype=np.uint8)

        def draw(guidance: float) -> list[list[np.ndarray]]:
            tokens = sample_hf(model, prefixes, blank, first, colors, side * side, params, guidance)
            images = [dequantise(row, palette, side) for row in tokens]
            return [images[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]

        column("HF ImageGPT", sum(p.numel() for p in model.parameters()), steps, bpp, draw)
    return result


def learned(column: dict, unigram: float) -> list[str]:
    """Why a model has not learned (empty when it has)."""
    reasons = []
    if not column["bpp"] < 0.8 * unigram:
        reasons.append(f"test bits/pixel {column['bpp']:.3f} not well below the unigram baseline's {unigram:.3f}")
    if "adherence" in column and column["adherence"] < 0.3:
        reasons.append(f"digits adherence {column['adherence']:.1%} below three times chance (30%)")
    return reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits-minutes", type=float, default=4.0)
    parser.add_argument("--shapes-minutes", type=float, default=10.0)
    parser.add_argument("--samples-per-prompt", type=int, help="default: the recipe's eval.samples_per_prompt")
    parser.add_argument("--skip-hf", action="store_true", help="only our recipes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.2 minutes each, 2 samples per prompt")
    args = parser.parse_args()
    if args.quick:
        args.digits_minutes = args.shapes_minutes = 0.2
        args.samples_per_prompt = args.samples_per_prompt or 2
    load = LoadWatch().start()
    work = Path(tempfile.mkdtemp(prefix="aigc-images-"))
    print(f"{torch.get_num_threads()} threads; work in {work}", flush=True)
    results = []
    for recipe, minutes in (("digits", args.digits_minutes), ("shapes", args.shapes_minutes)):
        result = compare(recipe, work / recipe, minutes, args.samples_per_prompt, args.skip_hf)
        print(f"{recipe} done: {minutes:g} min budget each, {result['prompts']} prompts x "
              f"{result['per_prompt']} samples", flush=True)
        results.append(result)

    for result in results:
        columns = result["columns"]
        names = list(columns)
        print(f"\n{result['recipe']}: {result['prompts']} prompts x {result['per_prompt']} samples per prompt, "
              f"g = classifier-free guidance scale (1: none)")
        print(f"| {'':<26} | " + " | ".join(f"{n:>18}" for n in names) + " |")
        print(f"|{'-' * 28}|" + "|".join("-" * 20 for _ in names) + "|")
        metrics = [("parameters", "params", "{:,}"), ("training steps", "steps", "{:,}"),
                   ("test bits/pixel", "bpp", "{:.3f}")]
        if "adherence" in columns[names[0]]:
            metrics += [("adherence", "adherence", "{:.1%}")]
        else:
            metrics += [("adherence, seen", "adherence_seen", "{:.1%}"),
                        ("adherence, held-out", "adherence_heldout", "{:.1%}")]
        metrics += [("samples/s", "samples_per_s", "{:.1f}")]
        for label, key, fmt in metrics:
            print(f"| {label:<26} | " + " | ".join(f"{fmt.format(columns[n][key]):>18}" for n in names) + " |")
        first = columns[names[0]]
        if "classifier_real_accuracy" in first:
            print(f"adherence ceiling (the classifier on real digits): {first['classifier_real_accuracy']:.1%}; "
                  "chance 10%")
        print(f"unigram baseline (pixel colour frequencies alone): {result['unigram_bpp']:.3f} bits/pixel")
        for name in names:
            if name.endswith("g=1") and (reasons := learned(columns[name], result["unigram_bpp"])):
                print(f"COMPARISON VOID: {name.split(',')[0]} has not learned: {'; '.join(reasons)}")
    print("\ntargets: digits adherence >= 95%; shapes held-out adherence >= 90%")
    print(load.verdict())


if __name__ == "__main__":
    main()
