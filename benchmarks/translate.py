"""English -> Chinese on Tatoeba: our encoder-decoder against Hugging Face ``MarianMTModel``, same budget.

Both models see the same data: the translate recipe's prepare stage (one BPE tokenizer, the keyed-hash
split), the same length-bucketed batches (``PairSampler``, same seed), the same AdamW settings and
learning-rate schedule, label smoothing and gradient clipping, for the same wall-clock budget. Ours is
trained by ``aigc.train`` itself (evaluations and checkpoints included, as a user runs it); Marian by
a plain loop. Marian is built from a config (random init) of the same width, depth, heads and
parameter count (its GELU feed-forward is 1.5x as wide as our SwiGLU one, which has three matrices).
Both decode the same fixed 1,000 test pairs greedily in batches of 64 and are scored with sacrebleu
(``zh`` tokenizer for BLEU).

    python benchmarks/translate.py [--minutes 10] [--test-pairs 1000] [key=value ...]   (recipe overrides)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

from aigc.config import load_config
from aigc.data.pairs import PairSampler, read_sequences
from aigc.tasks import prepare
from aigc.data.shards import open_split, read_manifest
from aigc.generate.sampling import SamplingParams
from aigc.generate.translate import Translator
from aigc.training.loop import train
from aigc.training.optim import build_optimizer, learning_rate

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba_eng_cmn.tsv"
BATCH = 64


def marian(config, vocab: int):
    """A random-init MarianMTModel of our model's shape; token ``vocab`` is its padding id."""
    from transformers import MarianConfig, MarianMTModel

    m = config.model
    hf = MarianConfig(
        vocab_size=vocab + 1, d_model=m.n_embd, encoder_layers=m.n_encoder_layer or m.n_layer, decoder_layers=m.n_layer,
        encoder_attention_heads=m.n_head, decoder_attention_heads=m.n_head, encoder_ffn_dim=3 * m.hidden // 2,
        decoder_ffn_dim=3 * m.hidden // 2, max_position_embeddings=m.block_size, activation_function="gelu",
        dropout=m.dropout, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=vocab, eos_token_id=0,
        decoder_start_token_id=0, forced_eos_token_id=None, scale_embedding=True, share_encoder_decoder_embeddings=True,
    )
    torch.manual_seed(config.seed)
    return MarianMTModel(hf)


def train_marian(model, config, pairs, eot: int, pad: int, seconds: float) -> tuple[int, float, float]:
    """Train for ``seconds``; return steps, target tokens/s and the last loss."""
    tc = config.train
    sampler = PairSampler(pairs, eot, config.model.block_size, tc.batch_size, tc.grad_accum, config.seed)
    optimizer = build_optimizer(model, tc, torch.device("cpu"))
    model.train()
    started, step, tokens, loss = time.perf_counter(), 0, 0, math.nan
    while (elapsed := time.perf_counter() - started) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(tc, step, elapsed / seconds)
        for (src, src_mask, tgt_in), tgt_out in sampler.step_batches(step):
            src = src.masked_fill(~src_mask, pad)
            tgt_in = tgt_in.masked_fill((tgt_out < 0) & (torch.arange(tgt_in.shape[1]) > 0), pad)
            logits = model(input_ids=src, attention_mask=src_mask.long(), decoder_input_ids=tgt_in).logits
            loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-1,
                                   label_smoothing=tc.label_smoothing) / tc.grad_accum
            loss.backward()
            tokens += int((tgt_out >= 0).sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    return step, tokens / (time.perf_counter() - started), loss.item() * tc.grad_accum


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
                outputs.append(row[: row.index(eot)] if eot in row else row)
    return outputs


def scores(hypotheses: list[str], references: list[str]) -> tuple[float, float]:
    return (sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score,
            sacrebleu.corpus_chrf(hypotheses, [references]).score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each model")
    parser.add_argument("--test-pairs", type=int, default=1000)
    parser.add_argument("overrides", nargs="*", help="translate recipe overrides, e.g. model.n_embd=256")
    args = parser.parse_args()
    if not TATOEBA.is_file():
        sys.exit(f"{TATOEBA} is missing")
    work = Path(tempfile.mkdtemp(prefix="aigc-translate-"))
    config = load_config("translate", [f"data.paths=[{TATOEBA}]", f"run.dir={work / 'ours'}", "data.test_fraction=0.05",
                                       f"train.max_minutes={args.minutes}", "train.schedule=time", *args.overrides])
    prepare(config)
    data_dir = config.run_dir / "data"
    manifest = read_manifest(data_dir)
    eot, vocab = manifest["tokenizer"]["eot_id"], manifest["tokenizer"]["vocab_size"]

    def split(name: str):
        return read_sequences(open_split(data_dir, f"{name}.src", manifest), open_split(data_dir, f"{name}.tgt", manifest), eot)

    test = split("test")[: args.test_pairs]
    if len(test) < args.test_pairs:
        sys.exit(f"the test split has only {len(test)} pairs")
    print(f"data: {len(split('train')):,} training pairs, {len(test):,} test pairs, vocabulary {vocab:,}; "
          f"budget {args.minutes:g} min each, {torch.get_num_threads()} threads", flush=True)

    outcome = train(config, log=lambda line: None)
    generator = Translator.from_checkpoint(config.run_dir)
    sources = [generator.decode(s[:-1].tolist()) for s, _ in test]
    references = [generator.decode(t[:-1].tolist()) for _, t in test]
    greedy = SamplingParams(max_new_tokens=config.model.block_size, temperature=0)
    started = time.perf_counter()
    test_ids = [s.tolist() for s, _ in test]  # both models decode from the same source ids
    ours_ids = [h[0].tokens for i in range(0, len(test_ids), BATCH)
                for h in generator.translate_ids(test_ids[i : i + BATCH], greedy)]
    ours_seconds = time.perf_counter() - started
    ours_decode = len(sources) / ours_seconds
    ours_out = [generator.decode_target(ids) for ids in ours_ids]
    ours_bleu, ours_chrf = scores(ours_out, references)
    ours_params = generator.model.num_params()
    print(f"ours done: {outcome.summary()}", flush=True)

    model = marian(config, vocab)
    steps, hf_rate, hf_loss = train_marian(model, config, split("train"), eot, vocab, args.minutes * 60)
    started = time.perf_counter()
    hf_ids = decode_marian(model, test_ids, eot, vocab, config.model.block_size)
    hf_seconds = time.perf_counter() - started
    hf_decode = len(sources) / hf_seconds
    hf_bleu, hf_chrf = scores([generator.decode(ids) for ids in hf_ids], references)
    hf_params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # sinusoidal positions are frozen
    print(f"marian done: {steps} steps, last loss {hf_loss:.3f}", flush=True)

    rows = [("parameters", ours_params, hf_params, "{:,.0f}"), ("test BLEU (zh)", ours_bleu, hf_bleu, "{:.2f}"),
            ("test chrF", ours_chrf, hf_chrf, "{:.2f}"), ("train target tokens/s", outcome.tokens_per_s, hf_rate, "{:,.0f}"),
            ("greedy decode sentences/s", ours_decode, hf_decode, "{:.1f}"),
            ("greedy output tokens/s", sum(map(len, ours_ids)) / ours_seconds, sum(map(len, hf_ids)) / hf_seconds,
             "{:,.0f}")]
    print(f"\n| {'':<26} | {'aigc Seq2Seq':>13} | {'HF Marian':>13} | {'ratio':>6} |")
    print(f"|{'-' * 28}|{'-' * 15}|{'-' * 15}|{'-' * 8}|")
    for name, ours, theirs, fmt in rows:
        print(f"| {name:<26} | {fmt.format(ours):>13} | {fmt.format(theirs):>13} | {ours / max(theirs, 1e-9):>6.2f} |")
    print("\ntargets: BLEU and chrF ratio >= 1.00; tokens/s and sentences/s ratio >= 1.30")
    print("sample translations (source / ours / Marian / reference):")
    for i in range(3):
        print(f"  {sources[i]} / {ours_out[i]} / {generator.decode(hf_ids[i])} / {references[i]}")


if __name__ == "__main__":
    main()
