"""Pretrained model shapes on this machine: `aigc import`, then decoding against Hugging Face ``generate``.

Random weights with the shapes of GPT-2 small (124M), SmolLM2-135M (Llama) and Qwen2.5-0.5B (Qwen2) are
saved by ``transformers`` as Hugging Face folders in bfloat16, as such checkpoints ship (the tokenizer is a
small one trained here; the models keep their real vocabulary sizes). For each:

1. ``aigc import`` in a process of its own: wall seconds and peak RSS (the kernel's high-water mark for that
   process). Limit: 1.3 x the weight bytes + 300 MB.
2. Greedy decoding of a 128-token random prompt, 128 new tokens, no early stop, at batch 1 and 8: ours (the
   imported run, as ``aigc generate`` loads it) against ``AutoModelForCausalLM.from_pretrained(...).generate``
   on the same folder, both at float32 and at bfloat16 weights; ours also with ``--quantize int8``. Time to
   first token (the prompt's prefill plus one token) and decode tokens/s after it. The floor is the
   weight-read limit: the bytes every decode step reads (each matrix once, the tied output projection
   included) over this machine's read rate, measured in the same run with every core reading, times the
   batch (a step reads the weights once for every row of the batch).
3. The perplexity change of int8 weights on a tiny model trained here with ``aigc run text``
   (``aigc eval RUN --quantize int8``).

Targets (batch 1): ours at least 1.5x HF at the same dtype for the 124M and 135M shapes, or within 1.2x
of the floor where 1.5x would pass it; ours int8 at least 2.5x HF float32 and within 1.3x of its floor.

    python benchmarks/pretrained.py [--new-tokens 128] [--shapes gpt2 smollm2 qwen2.5]
    python benchmarks/pretrained.py --quick      # smoke run: the two small shapes, 16 new tokens, batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from generate import ours, read_bandwidth, theirs
from loadwatch import LoadWatch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' tiny tokenizer and chat template, written once

from aigc.models.quantize import Int8Linear  # noqa: E402
from aigc.tasks import load_generator  # noqa: E402
from tests.parity.tiny_hf import SPECIALS, save_tokenizer  # noqa: E402

SHAPES = {  # the published configs' shapes (config.json of each model on the Hugging Face hub)
    "gpt2": ("GPT-2 small 124M", "gpt2", "chatml", dict(
        n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    "smollm2": ("SmolLM2-135M", "llama", "smollm", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        vocab_size=49152)),
    "qwen2.5": ("Qwen2.5-0.5B", "qwen2", "chatml", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        vocab_size=151936)),
}
PROMPT_TOKENS = 128
SPEED_TARGET, FLOOR_SLACK = 1.5, 1.2  # ours vs HF at the same dtype, or within 1.2x of the floor
INT8_TARGET, INT8_FLOOR_SLACK = 2.5, 1.3  # ours int8 vs HF float32, and within 1.3x of its floor


def save_hf_folder(folder: Path, model_type: str, template: str, shape: dict) -> int:
    """A random model of ``shape`` saved in bfloat16 with a small tokenizer; returns its weight bytes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fast = save_tokenizer(folder, template)
    eos = fast.convert_tokens_to_ids(SPECIALS[template]["eos_token"])
    config = AutoConfig.for_model(model_type, bos_token_id=eos, eos_token_id=eos, torch_dtype="bfloat16", **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


REPORT_PEAK = """
import sys
from aigc.cli import main
code = main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(peak.split()[1]) * 1024, file=sys.stderr)
sys.exit(code)
"""


def import_in_a_process(folder: Path, run_dir: Path) -> tuple[float, float]:
    """(seconds, peak RSS in bytes) of ``aigc import folder`` in a fresh process.

    The peak is the process's own ``VmHWM``, read as it exits: the kernel's ``ru_maxrss`` of a child
    starts at its parent's RSS when forked (this benchmark's, models included), so it cannot be used.
    """
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", REPORT_PEAK, "import", str(folder), f"run.dir={run_dir}"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"aigc import failed:\n{done.stderr}")
    return seconds, int(done.stderr.strip().splitlines()[-1])


def bytes_per_token(model: nn.Module) -> int:
    """What one decode step reads at batch 1: every matrix product's weights (int8 ones with their scales)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, Int8Linear):
            total += module.weight.numel() + module.scale.numel() * module.scale.element_size()
    return total


def our_generator(run_dir: Path, dtype: str):
    """The imported run as ``aigc generate`` loads it (``--quantize int8`` for "int8"), weights cast to ``dtype``."""
    generator = load_generator(run_dir, quantize="int8" if dtype == "int8" else None)
    if dtype == "fp32":
        generator.model.float()
    return generator


def decode_rows(name: str, folder: Path, run_dir: Path, bandwidth: float, new_tokens: int, batches: list[int],
                vocab: int) -> list[dict]:
    from transformers import AutoModelForCausalLM

    rows, hf_rate = [], {}
    for dtype in ("fp32", "bf16", "int8"):
        generator = our_generator(run_dir, dtype)
        floor = bandwidth / bytes_per_token(generator.model)
        hf = None
        if dtype != "int8":
            hf = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16).eval()
        for batch in batches:
            torch.manual_seed(batch)
            prompts = torch.randint(0, vocab, (batch, PROMPT_TOKENS))
            ours(generator.engine, prompts.tolist(), 4)  # warm-up
            our_first, our_decode = ours(generator.engine, prompts.tolist(), new_tokens)
            row = dict(model=name, dtype=dtype, batch=batch, ours_ttft=our_first,
                       ours=batch * (new_tokens - 1) / our_decode, floor=batch * floor)
            if hf is not None:
                with torch.inference_mode():
                    theirs(hf, prompts, 4)
                    hf_first, hf_decode = theirs(hf, prompts, new_tokens)
                row |= dict(hf_ttft=hf_first, hf=batch * (new_tokens - 1) / hf_decode)
                hf_rate[dtype, batch] = row["hf"]
            row["target"] = target(row, hf_rate)
            rows.append(row)
            print_row(row)
        del generator, hf
    return rows


def target(row: dict, hf_rate: dict) -> str:
    """The batch-1 target of a row and whether it passes; "" where none applies."""
    if row["batch"] != 1:
        return ""
    if row["dtype"] == "int8":
        goal = max(INT8_TARGET * hf_rate["fp32", 1], row["floor"] / INT8_FLOOR_SLACK)
        wanted = f">= {goal:,.1f} (2.5x HF fp32 and floor/1.3)"
    elif row["model"] == SHAPES["qwen2.5"][0]:
        return ""
    else:
        goal = min(SPEED_TARGET * row["hf"], row["floor"] / FLOOR_SLACK)
        wanted = f">= {goal:,.1f} (1.5x HF or floor/1.2)"
    return f"{'PASS' if row['ours'] >= goal else 'FAIL'} {wanted}"


HEADER = (f"| {'model':<16} | {'dtype':<5} | {'batch':>5} | {'ours TTFT ms':>12} | {'HF TTFT ms':>10} | "
          f"{'ours tok/s':>10} | {'HF tok/s':>8} | {'ratio':>5} | {'floor tok/s':>11} | target (batch 1)")


def print_row(row: dict) -> None:
    hf_ttft = f"{row['hf_ttft'] * 1000:>10.0f}" if "hf" in row else f"{'-':>10}"
    hf = f"{row['hf']:>8,.1f}" if "hf" in row else f"{'-':>8}"
    ratio = f"{row['ours'] / row['hf']:>5.2f}" if "hf" in row else f"{'-':>5}"
    floor = f"{row['floor']:>11,.1f}"
    print(f"| {row['model']:<16} | {row['dtype']:<5} | {row['batch']:>5} | {row['ours_ttft'] * 1000:>12.0f} | "
          f"{hf_ttft} | {row['ours']:>10,.1f} | {hf} | {ratio} | {floor} | {row['target']}", flush=True)


def int8_perplexity_change(work: Path, steps: int) -> tuple[float, float]:
    """(float perplexity, int8 change in percent) of a tiny model trained here on tinyshakespeare's head."""
    run_dir = work / "tiny"
    corpus = ROOT / "tests" / "fixtures" / "tinyshakespeare_head.txt"
    tiny = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=128", "train.batch_size=16",
            "train.max_minutes=null", "train.schedule=steps", f"train.max_steps={steps}", "eval.samples=0"]
    for command in (["run", "text", f"data.paths=[{corpus}]", f"run.dir={run_dir}", *tiny],
                    ["eval", str(run_dir), "--quantize", "int8", "eval.samples=0"]):
        done = subprocess.run([sys.executable, "-m", "aigc", *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"aigc {command[0]} failed:\n{done.stderr}")
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    stored = float(torch.tensor(report["quantization"]["loss_stored_weights"]).exp())
    return stored, report["quantization"]["perplexity_change_percent"]


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help="smoke run: two small shapes, 16 new tokens, batch 1")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.shapes = 16, ["gpt2", "smollm2"]
    batches = [1] if args.quick else [1, 8]
    load = LoadWatch().start()
    bandwidth = read_bandwidth()
    print(f"{torch.get_num_threads()} threads; memory read rate {bandwidth / 1e9:.1f} GB/s; greedy, "
          f"{PROMPT_TOKENS}-token prompts, {args.new_tokens} new tokens\n")
    imports, rows = [], []
    with tempfile.TemporaryDirectory(prefix="aigc-pretrained-") as tmp:
        work = Path(tmp)
        for key in args.shapes:
            name, model_type, template, shape = SHAPES[key]
            folder, run_dir = work / key, work / "runs" / key
            weight_bytes = save_hf_folder(folder, model_type, template, shape)
            seconds, rss = import_in_a_process(folder, run_dir)
            imports.append((name, weight_bytes, seconds, rss))
        print("| model            | bf16 weights MB | import s | peak RSS MB | limit MB (1.3 x + 300) |  |")
        print("|------------------|-----------------|----------|-------------|------------------------|--|")
        for name, weight_bytes, seconds, rss in imports:
            limit = 1.3 * weight_bytes + 300e6
            print(f"| {name:<16} | {weight_bytes / 1e6:>15,.0f} | {seconds:>8.1f} | {rss / 1e6:>11,.0f} | "
                  f"{limit / 1e6:>22,.0f} | {'PASS' if rss <= limit else 'FAIL'} |")
        print()
        print(HEADER)
        print("|" + "|".join("-" * len(cell) for cell in HEADER.split("|")[1:]) + "|")
        for key in args.shapes:
            name, _, _, shape = SHAPES[key]
            rows += decode_rows(name, work / key, work / "runs" / key, bandwidth, args.new_tokens, batches,
                                shape["vocab_size"])
        ppl, change = int8_perplexity_change(work, 50 if args.quick else 600)
    print(f"\nint8 weights on a tiny trained model (4L 128w, tinyshakespeare head): perplexity {ppl:.2f} -> "
          f"{change:+.2f}% (target: within 2%)")
    failed = [r for r in rows if r["target"].startswith("FAIL")]
    print(f"targets: {len(rows and [r for r in rows if r['target']]) - len(failed)} of "
          f"{len([r for r in rows if r['target']])} decode targets pass")
    print(load.verdict())


if __name__ == "__main__":
    main()
