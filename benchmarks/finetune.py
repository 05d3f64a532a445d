"""Fine-tuning on this machine: aigc LoRA against ``transformers`` + ``peft``, and what SFT does to the code model.

1. LoRA training speed and memory. A random model of Qwen2.5-0.5B's shape (as ``SHAPES["qwen2.5"]`` of
   pretrained.py: saved by ``transformers`` in bfloat16, the real vocabulary size, a small tokenizer trained
   here) gets rank-16 adapters (alpha 32, dropout 0) on every attention and MLP projection (q, k, v, o,
   gate, up, down), the base frozen in bfloat16, bf16 autocast, 4 x 512-token windows per step, AdamW on
   the adapters, the same number of steps and threads on both sides, each side in a fresh process that
   builds only its own model:
   - ours: ``aigc import`` of the folder, ``aigc prepare`` of tinyshakespeare's head with the model's
     tokenizer, then the measured ``aigc train text model.init=<imported run> train.lora.rank=16 ...``;
     tokens/s from its metrics.jsonl (``elapsed_s`` from the end of the warm-up steps to the last step);
   - theirs: ``AutoModelForCausalLM.from_pretrained(folder, dtype=bfloat16)`` (sdpa attention),
     ``peft.get_peft_model`` with the same ``LoraConfig``, ``model.train()``, fused AdamW (else foreach) on
     the trainable parameters, ``model(input_ids=x, labels=x).loss`` under bf16 autocast (what the HF
     Trainer does with ``bf16=True``), and the exact windows our loader draws for each step
     (``WindowSampler`` over our prepared ``train.bin``, the same seed). Both sides train with the same
     optimizer settings (AdamW's defaults: a constant learning rate, weight decay 0.01, no clipping), so
     their losses should track each other: a check that the two compute the same thing.
   Peak RSS is each process's own high-water mark (``VmHWM``, read as it exits; a child's ``ru_maxrss``
   starts from its parent's, see pretrained.py). The first steps are warm-up and are not timed.
   Target: ours at least 1.2x their tokens/s at no more peak memory.
2. Instruction fine-tuning of the code model: ``aigc run code`` (3 CPU minutes; or an existing run,
   ``--code-run``), then ``aigc run sft model.init=<it> train.max_minutes=5 eval.execute=true``; the
   fine-tuned model against the same code model without fine-tuning on the sft run's held-out standard
   library functions (``aigc.tasks.chat.evaluation.evaluate_conversations``, same prompts through the same chat
   template, same sampling): held-out assistant loss, and the shares of answers that parse, compile and
   pass the reference's doctests (run in sandboxed subprocesses).

    python benchmarks/finetune.py [--steps 10] [--warmup 2] [--threads N] [--code-run runs/code] [--tables lora|sft]
    python benchmarks/finetune.py --quick    # smoke run: 2-layer 64-wide model, 3 steps; 20 s code run and 20 s SFT
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
from loadwatch import LoadWatch  # benchmarks/loadwatch.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' tiny tokenizer

CORPUS = ROOT / "tests" / "fixtures" / "tinyshakespeare_head.txt"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, BATCH, SEQ_LEN, LR, SEED = 16, 32, 4, 512, 1e-4, 1337
SPEED_TARGET = 1.2  # ours vs transformers + peft, at no more peak RSS
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def aigc(*args: str, peak: bool = False) -> int | None:
    """Run ``aigc args`` in a fresh process; with ``peak``, its peak RSS in bytes (its own VmHWM)."""
    from pretrained import REPORT_PEAK  # here, not at the top: the peer's worker process stays free of it

    command = [sys.executable, "-c", REPORT_PEAK, *args] if peak else [sys.executable, "-m", "aigc", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"aigc {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return int(done.stderr.strip().splitlines()[-1]) if peak else None


# ---- table 1: LoRA training, ours against transformers + peft ----------------------------------------------------

def model_folder(folder: Path, quick: bool) -> tuple[str, int]:
    """A random Qwen2-family model in bfloat16 with a small tokenizer; (its name, weight bytes)."""
    from pretrained import SHAPES, save_hf_folder

    from tests.parity.tiny_hf import tokenizer

    name, model_type, template, shape = SHAPES["qwen2.5"]
    if quick:
        name, shape = "Qwen2 2L 64w", dict(TINY, vocab_size=len(tokenizer(template)))
    return name, save_hf_folder(folder, model_type, template, shape)


def lora_settings(base: Path, run_dir: Path, steps: int, threads: int) -> list[str]:
    """The ``aigc prepare`` / ``aigc train`` settings of our side (the same for both, so train finds the data)."""
    return ["text", f"data.paths=[{CORPUS}]", f"model.init={base}", f"run.dir={run_dir}", f"seed={SEED}",
            f"train.lora.rank={RANK}", f"train.lora.alpha={ALPHA}", "train.lora.dropout=0",
            f"train.lora.targets=[{','.join(TARGETS)}]", "train.precision=bf16", f"train.seq_len={SEQ_LEN}",
            f"train.batch_size={BATCH}", f"train.lr={LR}", f"train.max_steps={steps}", "train.max_minutes=null",
            "train.schedule=steps", "train.warmup_steps=0", f"train.min_lr={LR}", "train.grad_clip=0",
            "train.weight_decay=0.01", "train.log_every=1", "train.eval_every=100000",
            "train.eval_batches=1", "train.checkpoint_every=100000", f"train.threads={threads}"]


def ours(folder: Path, work: Path, steps: int, warmup: int, threads: int) -> dict:
    """Import, prepare (each in a process of its own), then the measured ``aigc train`` of the adapters."""
    base, run_dir = work / "base", work / "lora"
    started = time.perf_counter()
    import_rss = aigc("import", str(folder), f"run.dir={base}", peak=True)
    import_s = time.perf_counter() - started
    settings = lora_settings(base, run_dir, steps, threads)
    aigc("prepare", *settings)
    rss = aigc("train", *settings, peak=True)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {line["step"]: line for line in lines if "tokens_per_s" in line}
    seconds = by_step[steps]["elapsed_s"] - by_step[warmup]["elapsed_s"]
    return dict(tokens_per_s=(steps - warmup) * BATCH * SEQ_LEN / seconds, peak_rss=rss, import_s=import_s,
                import_rss=import_rss, loss=by_step[steps]["loss"], data=str(run_dir / "data"))


def theirs_worker(spec: dict) -> dict:
    """transformers + peft on the same folder, windows, batch, steps and threads (see the module docstring)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aigc.data.loader import WindowSampler
    from aigc.data.shards import open_split

    torch.set_num_threads(spec["threads"])
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        optimizer = torch.optim.AdamW(trainable, lr=LR, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(trainable, lr=LR, foreach=True)
    windows = WindowSampler(open_split(Path(spec["data"]), "train"), SEQ_LEN, BATCH, 1, SEED)
    ends = [time.perf_counter()]
    for step in range(spec["steps"]):
        ((inputs,), _), = windows.step_batches(step)  # ours predicts inputs' next tokens; HF shifts labels itself
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=inputs, labels=inputs, use_cache=False).loss  # no KV cache to build
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    seconds = ends[-1] - ends[spec["warmup"]]
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return dict(tokens_per_s=(spec["steps"] - spec["warmup"]) * BATCH * SEQ_LEN / seconds,
                peak_rss=int(peak.split()[1]) * 1024, loss=loss.item(),
                trained=sum(p.numel() for p in trainable), fused=optimizer.defaults.get("fused") is True)


def theirs(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the transformers + peft worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lora_table(name: str, weight_bytes: int, mine: dict, peer: dict, steps: int, warmup: int, threads: int) -> bool:
    ratio = mine["tokens_per_s"] / peer["tokens_per_s"]
    passed = ratio >= SPEED_TARGET and mine["peak_rss"] <= peer["peak_rss"]
    size = f"{weight_bytes / 1e6:,.0f}" if weight_bytes > 1e8 else f"{weight_bytes / 1e6:.2f}"
    print(f"LoRA rank {RANK} (alpha {ALPHA}) on {', '.join(TARGETS)} of a random {name} ({size} MB bf16 weights); "
          f"{BATCH} x {SEQ_LEN} tokens a step, {steps} steps ({warmup} warm-up, not timed), "
          f"{threads} threads\n")
    header = (f"| {'side':<22} | {'tokens/s':>8} | {'peak RSS MB':>11} | {'last loss':>9} | "
              f"{'vs transformers + peft':<40} |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    verdict = (f"{ratio:.2f}x tok/s, {mine['peak_rss'] / peer['peak_rss']:.2f}x RSS: "
               f"{'PASS' if passed else 'FAIL'}")
    for side, row, cell in (("aigc LoRA", mine, verdict), ("transformers + peft", peer, "")):
        print(f"| {side:<22} | {row['tokens_per_s']:>8,.0f} | {row['peak_rss'] / 1e6:>11,.0f} | {row['loss']:>9.3f} | "
              f"{cell:<40} |")
    print(f"\ntarget: ours >= {SPEED_TARGET}x their tokens/s at no more peak RSS. Peak RSS: the training process "
          f"alone (ours imported beforehand by `aigc import`, {mine['import_s']:.1f} s at a peak of "
          f"{mine['import_rss'] / 1e6:,.0f} MB in its own process); theirs: {peer['trained']:,} trained parameters, "
          f"{'fused' if peer['fused'] else 'foreach'} AdamW; both a constant learning rate of {LR}, weight decay 0.01 "
          "(AdamW's default), no gradient clipping")
    return passed


# ---- table 2: the code model before and after SFT ----------------------------------------------------------------

def code_run(work: Path, given: Path | None, minutes: float | None) -> Path:
    if given is not None:
        return given.resolve()
    run_dir = work / "code"
    aigc("run", "code", f"run.dir={run_dir}", *([f"train.max_minutes={minutes}"] if minutes else []))
    return run_dir


def sft_run(work: Path, code: Path, minutes: float) -> Path:
    run_dir = work / "sft"
    aigc("run", "sft", f"model.init={code}", f"run.dir={run_dir}", f"train.max_minutes={minutes}", "eval.execute=true")
    return run_dir


def base_report(code: Path, sft: Path) -> dict:
    """The code model without fine-tuning, scored as ``aigc eval`` scores the sft run (its checkpoint's settings)."""
    from aigc.checkpoint import load_checkpoint
    from aigc.data.shards import read_manifest
    from aigc.tasks.chat.evaluation import evaluate_conversations
    from aigc.tasks import load_generator

    best = sft / "checkpoints" / "best"
    config = load_checkpoint(best if best.exists() else sft).config
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"execute": True})})
    return evaluate_conversations(load_generator(code), sft, read_manifest(sft / "data"), config)


def sft_table(code: Path, sft: Path, before: dict, after: dict, train_s: float) -> None:
    print(f"\nthe code model ({code}) answering {after['code']['completions']} held-out standard library functions, "
          "before and after SFT\n")
    header = (f"| {'model':<28} | {'held-out loss':>13} | {'parses':>12} | {'compiles':>12} | "
              f"{'doctests pass':>13} |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name, report in (("code, no fine-tuning", before), (f"code + SFT ({train_s:.0f} s)", after)):
        checks, doctests = report["code"], report["code"]["doctests"]
        tests = (f"{doctests['passed']}/{doctests['with_doctests']} {doctests['pass_rate']:.0%}"
                 if doctests["with_doctests"] else "- (none)")
        print(f"| {name:<28} | {report['loss']:>13.3f} | {checks['parses']:>4} {checks['syntax_valid_rate']:>6.0%} | "
              f"{checks['compiles']:>4} {checks['compile_rate']:>6.0%} | {tests:>13} |")
    manifest = json.loads((sft / "data" / "manifest.json").read_text())
    kept, too_long = manifest["cleaning"]["kept"]["documents"], manifest["cleaning"]["dropped"].get("too_long", {})
    print(f"\nloss: mean over the held-out assistant tokens. Answers: to the first eval.samples held-out functions, "
          f"{after['code']['doctests']['with_doctests']} of them with doctests; the corpus kept {kept:,} functions and "
          f"dropped {too_long.get('documents', 0):,} as longer than the training length (the model's context)")


def sft_seconds(sft: Path) -> float:
    lines = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    return max(line["elapsed_s"] for line in lines if "tokens_per_s" in line)  # training, not the evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="LoRA training steps on each side")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--code-run", type=Path, help="an existing `aigc run code` run (else one is trained)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2-layer 64-wide model, 3 steps (1 warm-up); 20 s code run and 20 s SFT")
    parser.add_argument("--tables", choices=["both", "lora", "sft"], default="both", help="which tables to measure")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(theirs_worker(json.loads(args.worker))))
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.quick:
        args.steps, args.warmup = 3, 1
    if not 0 < args.warmup < args.steps:
        parser.error(f"--warmup must be at least 1 and below --steps ({args.steps})")
    print("mode: " + ("QUICK smoke run (tiny model, 3 steps, 20 s code run and SFT): the numbers say nothing about "
                      "the targets" if args.quick else "full"), flush=True)
    load = LoadWatch(threads=args.threads).start()
    with tempfile.TemporaryDirectory(prefix="aigc-finetune-") as tmp:
        work = Path(tmp)
        folder = work / "hf"
        if args.tables in ("both", "lora"):
            name, weight_bytes = model_folder(folder, args.quick)
            mine = ours(folder, work, args.steps, args.warmup, args.threads)
            peer = theirs(dict(folder=str(folder), data=mine["data"], steps=args.steps, warmup=args.warmup,
                               threads=args.threads))
            lora_passed = lora_table(name, weight_bytes, mine, peer, args.steps, args.warmup, args.threads)
            print(f"\nLoRA target: {'PASS' if lora_passed else 'FAIL'}")
        if args.tables in ("both", "sft"):
            code = code_run(work, args.code_run, 0.33 if args.quick else None)
            sft = sft_run(work, code, 0.33 if args.quick else 5)
            after = json.loads((sft / "eval" / "report.json").read_text())
            before = base_report(code, sft)
            sft_table(code, sft, before, after, sft_seconds(sft))
    print(load.verdict())


if __name__ == "__main__":
    main()
