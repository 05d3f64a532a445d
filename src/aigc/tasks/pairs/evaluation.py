"""A translation run's evaluation: val loss, and BLEU / chrF of the test split's translations (sacrebleu)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from aigc.config import Config
from aigc.data.pairs import PairSampler, split_pairs, target_start
from aigc.evaluation import summed_nll
from aigc.generate.sampling import SamplingParams
from aigc.tasks.pairs.translator import Translator, beam_params


def bleu_tokenizer(references: list[str]) -> str:
    """sacrebleu's ``zh`` tokenizer when the references are mostly CJK characters, else its default ``13a``."""
    text = "".join(references)
    cjk = sum("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in text)
    return "zh" if text and cjk / len(text) > 0.3 else "13a"


def evaluate_pairs(generator: Translator, run_dir: Path, manifest: dict, config: Config) -> dict[str, Any]:
    """Val loss of the seq2seq model, and BLEU / chrF of its translations of the test split (val if no test)."""
    import sacrebleu

    eot = target_start(manifest)
    data_dir = run_dir / "data"

    def pairs(split: str):
        return split_pairs(data_dir, manifest, split)

    val = pairs("val")
    sampler = PairSampler(val, eot, config.model.block_size, min(16, len(val)), 1, config.seed, split="val")
    total = count = 0.0
    with torch.inference_mode():
        for (src, src_mask, tgt_in), tgt_out in sampler.eval_batches(max(1, min(len(val) // 16, 50))):
            nll, scored = summed_nll(generator.model(src, src_mask, tgt_in), tgt_out)
            total, count = total + nll, count + scored
    split = "test" if manifest["splits"].get("test.src", {}).get("documents") else "val"
    chosen = pairs(split)[: config.eval.max_pairs]
    sources = [generator.decode(s[:-1].tolist()) for s, _ in chosen]
    references = [generator.decode_target(t[:-1].tolist()) for _, t in chosen]
    beam = beam_params(config.generate, config.model.block_size)
    params = SamplingParams(max_new_tokens=config.model.block_size, temperature=0)
    started = time.perf_counter()
    hypotheses = [out[0] for i in range(0, len(sources), 64) for out in generator.translate(sources[i : i + 64], params, beam)]
    seconds = time.perf_counter() - started
    tokenize = bleu_tokenizer(references)
    report = {
        "loss": total / count, "perplexity": math.exp(total / count), "tokens_scored": int(count),
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "bleu_tokenize": tokenize, "split": split, "pairs": len(chosen), "sentences_per_s": len(chosen) / seconds,
    }
    report["samples"] = [{"source": src, "reference": ref, "translation": hyp}
                         for src, ref, hyp in list(zip(sources, references, hypotheses))[:10]]
    return report
