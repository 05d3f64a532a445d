"""English -> Chinese on Tatoeba: our encoder-decoder against Hugging Face ``MarianMTModel``, each with its own tuning.

Both models see the same data: the translate recipe's prepare stage (one BPE tokenizer, the keyed-hash
split), the same length-bucketed batches (``PairSampler``, same seed), the same AdamW settings and
time-based warm-up + cosine schedule, label smoothing, dropout and gradient clipping. Ours is trained
by ``aigc.train`` itself (evaluations and checkpoints included, as a user runs it); Marian by a plain
loop. Marian is built from a config (random init) of the same width, depth, heads and parameter count
(its GELU feed-forward is 1.5x as wide as our SwiGLU one, which has three matrices); it is a post-norm
model, ours pre-norm, so they do not share a good learning rate.

Each side gets its own learning-rate and warm-up search of the same size (``OURS_GRID`` and
``MARIAN_GRID``: 3 learning rates x 2 warm-ups), every try at the same short budget
(``--search-minutes``), scored by the same code: cross-entropy (no label smoothing) on the whole
val split. The best try of each side then trains at the full budget (``--minutes``) and is reported.
(A short search favours fast starters: high learning rates and short warm-ups. It does so for both.)

Both decode the same fixed test pairs greedily in batches of 64, scored with sacrebleu (``zh``
tokenizer for BLEU). Two baselines that do not translate at all are scored the same way: the source
copied unchanged, and the most frequent training target written for every input. A model whose BLEU
is not well above the better of them (3x and +2 points) has not learned to use its source, and the
table then says the comparison is void.

    python benchmarks/translate.py [--minutes 10] [--search-minutes 1] [--test-pairs 1000] [key=value ...]
    python benchmarks/translate.py --quick      # smoke run: 2 tries a side, seconds each, 100 test pairs
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

from aigc.config import load_config
from aigc.data.pairs import PairSampler, split_pairs
from aigc.data.shards import read_manifest
from aigc.generate.sampling import SamplingParams
from aigc.tasks.pairs.translator import Translator
from aigc.tasks import prepare
from aigc.training.loop import train
from aigc.training.optim import build_optimizer, learning_rate

from loadwatch import LoadWatch  # benchmarks/loadwatch.py, beside this script

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba_eng_cmn.tsv"
BATCH = 64
OURS_GRID = {"lr": [1e-3, 3e-3, 6e-3], "warmup": [100, 400]}  # the recipe has 5.5e-4 and 400 (aigc tune, 5 min)
MARIAN_GRID = {"lr": [3e-4, 1e-3, 2e-3], "warmup": [100, 400]}  # post-norm: lower rates, as Marian/BART train


def marian(config, vocab: int, eot: int):
    """A random-init MarianMTModel of our model's shape; token ``vocab`` is its padding id."""
    from transformers import MarianConfig, MarianMTModel

    m = config.model
    hf = MarianConfig(
        vocab_size=vocab + 1, d_model=m.n_embd, encoder_layers=m.n_encoder_layer or m.n_layer, decoder_layers=m.n_layer,
        encoder_attention_heads=m.n_head, decoder_attention_heads=m.n_head, encoder_ffn_dim=3 * m.hidden // 2,
        decoder_ffn_dim=3 * m.hidden // 2, max_position_embeddings=m.block_size, activation_function="gelu",
        dropout=m.dropout, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=vocab, eos_token_id=eot,
        bos_token_id=eot, decoder_start_token_id=eot, forced_eos_token_id=None, scale_embedding=True,
        share_encoder_decoder_embeddings=True,
    )
    torch.manual_seed(config.seed)
    return MarianMTModel(hf)


def marian_inputs(src, src_mask, tgt_in, tgt_out, pad: int) -> dict:
    """Our collated batch in Marian's terms: padding is the pad id, the mask says which source tokens are real."""
    src = src.masked_fill(~src_mask, pad)
    tgt_in = tgt_in.masked_fill((tgt_out < 0) & (torch.arange(tgt_in.shape[1]) > 0), pad)
    return dict(input_ids=src, attention_mask=src_mask.long(), decoder_input_ids=tgt_in)


def train_marian(model, config, pairs, eot: int, pad: int, seconds: float) -> tuple[int, float, float]:
    """Train for ``seconds`` with ``config.train``; return steps, target tokens/s and the last loss."""
    tc = config.train
    sampler = PairSampler(pairs, eot, config.model.block_size, tc.batch_size, tc.grad_accum, config.seed)
    optimizer = build_optimizer(model, tc, torch.device("cpu"))
    torch.manual_seed(config.seed)  # dropout masks
    model.train()
    started, step, tokens, loss = time.perf_counter(), 0, 0, math.nan
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tc, step, elapsed / seconds)
        for (src, src_mask, tgt_in), tgt_out in sampler.step_batches(step):
            logits = model(**marian_inputs(src, src_mask, tgt_in, tgt_out, pad)).logits
            loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-1,
                                   label_smoothing=tc.label_smoothing) / tc.grad_accum
            loss.backward()
            tokens += int((tgt_out >= 0).sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    model.eval()
    return step, tokens / (time.perf_counter() - started), loss.item() * tc.grad_accum


@torch.inference_mode()
def val_loss(logits_of, pairs, eot: int, block: int) -> float:
    """Cross-entropy per target token (no label smoothing) over every pair of ``pairs``, the same for both models."""
    sampler = PairSampler(pairs, eot, block, min(BATCH, len(pairs)), 1, 0, split="val")
    total, count = 0.0, 0
    for start in range(0, len(sampler.pairs), BATCH):
        (src, src_mask, tgt_in), tgt_out = sampler.collate(sampler.pairs[start : start + BATCH])
        logits = logits_of(src, src_mask, tgt_in, tgt_out).float()
        total += F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-1, reduction="sum").item()
        count += int((tgt_out >= 0).sum())
    return total / count


def decode_marian(model, sources: list[list[int]], eot: int, pad: int, max_new: int) -> list[list[int]]:
    model.eval()
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(sources), BATCH):
            chunk = sources[i : i + BATCH]
            width = max(map(len, chunk))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk])
            generated = model.generate(input_ids=ids, attention_mask=(ids != pad).long(), max_new_tokens=max_new,
                                       num_beams=1, do_sample=False)
            for row in generated[:, 1:].tolist():  # drop the decoder start token
                row = [t for t in row if t != pad]
                outputs.append(row[: row.index(eot)] if eot in row else row)
    return outputs


def scores(hypotheses: list[str], references: list[str]) -> tuple[float, float]:
    return (sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score,
            sacrebleu.corpus_chrf(hypotheses, [references]).score)


def learned(bleu: float, baseline: float) -> bool:
    """Well above a non-translation: at least 3x the baseline's BLEU and 2 points more."""
    return bleu >= max(3 * baseline, baseline + 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="full training budget of each side's best try")
    parser.add_argument("--search-minutes", type=float, default=1.0, help="budget of every search try")
    parser.add_argument("--test-pairs", type=int, default=1000)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 tries a side, 0.1 min each, 0.2 min full, 100 test pairs")
    parser.add_argument("overrides", nargs="*", help="translate recipe overrides, e.g. model.n_embd=256")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.search_minutes, args.test_pairs = 0.2, 0.1, 100
    if not TATOEBA.is_file():
        sys.exit(f"{TATOEBA} is missing")
    load = LoadWatch().start()
    work = Path(tempfile.mkdtemp(prefix="aigc-translate-"))
    base = [f"data.paths=[{TATOEBA}]", "data.test_fraction=0.05", "train.schedule=time", *args.overrides]

    def recipe(run_dir: Path, minutes: float, lr: float | None = None, warmup: int | None = None):
        extra = [] if lr is None else [f"train.lr={lr}", f"train.warmup_steps={warmup}"]
        return load_config("translate", [*base, f"run.dir={run_dir}", f"train.max_minutes={minutes}", *extra])

    prepared = recipe(work / "prepared", args.minutes)
    prepare(prepared)
    data_dir = prepared.run_dir / "data"
    manifest = read_manifest(data_dir)
    eot, vocab, block = manifest["tokenizer"]["eot_id"], manifest["tokenizer"]["vocab_size"], prepared.model.block_size
    train_pairs, val_pairs = split_pairs(data_dir, manifest, "train"), split_pairs(data_dir, manifest, "val")
    test = split_pairs(data_dir, manifest, "test")[: args.test_pairs]
    if len(test) < args.test_pairs:
        sys.exit(f"the test split has only {len(test)} pairs")
    print(f"data: {len(train_pairs):,} training pairs, {len(val_pairs):,} val pairs (for the search), "
          f"{len(test):,} test pairs, vocabulary {vocab:,}; {torch.get_num_threads()} threads", flush=True)

    def run_dir_for(name: str) -> Path:
        """A run directory holding a copy of the prepared data and tokenizer, for one of our trainings."""
        folder = work / name
        shutil.copytree(data_dir, folder / "data")
        for file in prepared.run_dir.glob("*.json"):
            shutil.copy(file, folder / file.name)
        return folder

    def train_ours(minutes: float, lr: float, warmup: int, name: str) -> dict:
        config = recipe(run_dir_for(name), minutes, lr, warmup)
        outcome = train(config, log=lambda line: None)
        if outcome.interrupted:  # aigc train stops cleanly on Ctrl-C or SIGTERM; so does the benchmark
            sys.exit("interrupted")
        translator = Translator.from_checkpoint(config.run_dir)  # the latest checkpoint: the end of the budget
        translator.model.eval()
        loss = val_loss(lambda s, m, t, _: translator.model(s, m, t), val_pairs, eot, block)
        return {"lr": lr, "warmup": warmup, "steps": outcome.steps, "tokens_per_s": outcome.tokens_per_s,
                "val": loss, "translator": translator, "params": translator.model.num_params()}

    def train_hf(minutes: float, lr: float, warmup: int, name: str) -> dict:
        config = recipe(work / name, minutes, lr, warmup)  # only read: Marian writes no run directory
        model = marian(config, vocab, eot)
        steps, rate, _ = train_marian(model, config, train_pairs, eot, vocab, minutes * 60)
        loss = val_loss(lambda s, m, t, o: model(**marian_inputs(s, m, t, o, vocab)).logits, val_pairs, eot, block)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # sinusoidal positions are frozen
        return {"lr": lr, "warmup": warmup, "steps": steps, "tokens_per_s": rate, "val": loss, "model": model,
                "params": params}

    searches = {}
    for side, grid, run in (("aigc Seq2Seq", OURS_GRID, train_ours), ("HF Marian", MARIAN_GRID, train_hf)):
        lrs = [grid["lr"][0], grid["lr"][-1]] if args.quick else grid["lr"]  # --quick: 2 tries a side
        warmups = grid["warmup"][:1] if args.quick else grid["warmup"]
        tries = []
        for i, (lr, warmup) in enumerate(itertools.product(lrs, warmups)):
            result = run(args.search_minutes, lr, warmup, f"search{i}")
            result.pop("translator", None), result.pop("model", None)
            tries.append(result)
            print(f"search {side}: lr {lr:g}, warm-up {warmup}: {result['steps']} steps, val loss {result['val']:.3f}",
                  flush=True)
        searches[side] = tries

    best_ours = min(searches["aigc Seq2Seq"], key=lambda r: r["val"])
    ours = train_ours(args.minutes, best_ours["lr"], best_ours["warmup"], "ours")
    print(f"ours done: lr {ours['lr']:g}, warm-up {ours['warmup']}, {ours['steps']} steps, val loss {ours['val']:.3f}",
          flush=True)
    best_hf = min(searches["HF Marian"], key=lambda r: r["val"])
    theirs = train_hf(args.minutes, best_hf["lr"], best_hf["warmup"], "marian")
    print(f"marian done: lr {theirs['lr']:g}, warm-up {theirs['warmup']}, {theirs['steps']} steps, "
          f"val loss {theirs['val']:.3f}", flush=True)

    generator = ours["translator"]
    test_ids = [s.tolist() for s, _ in test]  # both models decode from the same source ids
    sources = [generator.decode(s[:-1]) for s in test_ids]
    references = [generator.decode_target(t[:-1].tolist()) for _, t in test]
    greedy = SamplingParams(max_new_tokens=block, temperature=0)
    started = time.perf_counter()
    ours_ids = [h[0].tokens for i in range(0, len(test_ids), BATCH)
                for h in generator.translate_ids(test_ids[i : i + BATCH], greedy)]
    ours_seconds = time.perf_counter() - started
    ours_out = [generator.decode_target(ids) for ids in ours_ids]
    started = time.perf_counter()
    hf_ids = decode_marian(theirs["model"], test_ids, eot, vocab, block)
    hf_seconds = time.perf_counter() - started
    hf_out = [generator.decode_target(ids) for ids in hf_ids]
    ours_bleu, ours_chrf = scores(ours_out, references)
    hf_bleu, hf_chrf = scores(hf_out, references)

    commonest = collections.Counter(tuple(t[:-1].tolist()) for _, t in train_pairs).most_common(1)[0][0]
    copy_bleu, copy_chrf = scores(sources, references)
    frequent_bleu, frequent_chrf = scores([generator.decode_target(list(commonest))] * len(references), references)
    baseline = max(copy_bleu, frequent_bleu)

    rows = [("parameters", ours["params"], theirs["params"], "{:,.0f}"),
            ("learning rate (searched)", ours["lr"], theirs["lr"], "{:g}"),
            ("warm-up steps (searched)", ours["warmup"], theirs["warmup"], "{:.0f}"),
            ("steps in the budget", ours["steps"], theirs["steps"], "{:,.0f}"),
            ("val loss (no smoothing)", ours["val"], theirs["val"], "{:.3f}"),
            ("test BLEU (zh)", ours_bleu, hf_bleu, "{:.2f}"), ("test chrF", ours_chrf, hf_chrf, "{:.2f}"),
            ("train target tokens/s", ours["tokens_per_s"], theirs["tokens_per_s"], "{:,.0f}"),
            ("greedy decode sentences/s", len(test) / ours_seconds, len(test) / hf_seconds, "{:.1f}"),
            ("greedy output tokens/s", sum(map(len, ours_ids)) / ours_seconds, sum(map(len, hf_ids)) / hf_seconds,
             "{:,.0f}")]
    print(f"\nsearch: {len(searches['aigc Seq2Seq'])} tries a side at {args.search_minutes:g} min each, scored on "
          f"{len(val_pairs)} val pairs; full budget {args.minutes:g} min each; {len(test)} test pairs")
    print(f"| {'try: lr/warm-up: val loss':<26} | " + " | ".join(f"{side:>17}" for side in searches) + " |")
    print(f"|{'-' * 28}|{'-' * 19}|{'-' * 19}|")
    for a, b in zip(*searches.values()):
        cells = (f"{r['lr']:g}/{r['warmup']}: {r['val']:.2f}".rjust(17) for r in (a, b))
        print(f"| {'':<26} | " + " | ".join(cells) + " |")
    print(f"\n| {'':<26} | {'aigc Seq2Seq':>13} | {'HF Marian':>13} | {'ratio':>6} |")
    print(f"|{'-' * 28}|{'-' * 15}|{'-' * 15}|{'-' * 8}|")
    for name, mine, other, fmt in rows:
        print(f"| {name:<26} | {fmt.format(mine):>13} | {fmt.format(other):>13} | {mine / max(other, 1e-9):>6.2f} |")
    print(f"\nbaselines that do not translate: source copied BLEU {copy_bleu:.2f} / chrF {copy_chrf:.2f}; the most "
          f"frequent training target for every input BLEU {frequent_bleu:.2f} / chrF {frequent_chrf:.2f}")
    for side, bleu in (("aigc Seq2Seq", ours_bleu), ("HF Marian", hf_bleu)):
        if not learned(bleu, baseline):
            print(f"COMPARISON VOID: {side}'s BLEU {bleu:.2f} is not well above the baseline's {baseline:.2f} "
                  "(3x and +2): it has not learned to use the source")
    print("targets: BLEU and chrF ratio >= 1.00; tokens/s and sentences/s ratio >= 1.30")
    print(load.verdict())
    print("sample translations (source / ours / Marian / reference):")
    for i in range(3):
        print(f"  {sources[i]} / {ours_out[i]} / {hf_out[i]} / {references[i]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
