"""Preference tuning on this machine: aigc's DPO with LoRA against TRL + PEFT, ORPO against DPO, and what DPO does
to the code model.

1. DPO with LoRA, speed and memory. A random model of Qwen2.5-0.5B's shape (benchmarks/finetune.py's, bfloat16,
   the real vocabulary, a small tokenizer trained here) gets rank-16 adapters (alpha 32, dropout 0) on every
   attention and MLP projection, the base frozen in bfloat16, bf16 autocast, beta 0.1, 2 pairs a step, AdamW on the
   adapters at a constant learning rate, no clipping, the same steps and threads, each side in a fresh process
   that builds only its own model, on the same pairs (prompts and answers cut from tinyshakespeare, 240 and 140
   characters; text form):
   - ours: ``aigc import``, ``aigc prepare dpo``, then the measured ``aigc train dpo train.lora.rank=16 ...``
     (the reference is the base with the adapters off);
   - theirs: ``trl.DPOTrainer`` with ``peft_config`` (its reference is PEFT's adapters disabled), ``bf16=True``,
     the same batch, learning rate and steps; step times from a callback.
   Tokens/s counts every token of both sequences of each pair (prompt and answer), the first steps not timed.
   Peak RSS is each process's own high-water mark (VmHWM). Target: ours at least 1.2x their tokens/s at no
   more memory.
2. ORPO against DPO (ours, the same run otherwise): tokens/s and peak RSS, LoRA and full fine-tuning (a full
   DPO fine-tune keeps a frozen copy of the model as its reference; ORPO has none).
3. Quality: ``aigc run dpo`` on the built-in pairs (the ``sft`` recipe's model, itself from ``aigc run code``):
   the share of held-out answers whose code parses, before (the sft model) and after. Target: 10 points higher.

    python benchmarks/preference.py [--steps 6] [--warmup 2] [--threads 2] [--tables speed|orpo|quality]
        [--runs DIR]   # where runs/code, runs/sft are (made there if missing) and runs/dpo goes
    python benchmarks/preference.py --quick       # smoke run: a 2-layer 64-wide model, 3 steps, no quality table
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
from finetune import ALPHA, CORPUS, RANK, TARGETS, aigc, model_folder  # benchmarks/finetune.py, beside this script
from loadwatch import LoadWatch, cpu_flags

BATCH, LR, BETA, SEED = 2, 1e-5, 0.1, 1337
SPEED_TARGET = 1.2


def pairs_file(path: Path, count: int = 64) -> Path:
    """Text pairs from tinyshakespeare: a 240-character prompt, the passage's next 140 characters as the chosen
    answer and a later passage's as the rejected one."""
    text = CORPUS.read_text(encoding="utf-8")
    rows = []
    for i in range(count):
        at = 1000 + i * 1500
        rows.append({"prompt": text[at : at + 240], "chosen": text[at + 240 : at + 380],
                     "rejected": text[at + 700 : at + 840]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def shaped_folder(folder: Path, shape: str, quick: bool) -> str:
    """A random model of ``shape`` (pretrained.py's SHAPES) with a small tokenizer, saved in bfloat16; its name."""
    from pretrained import SHAPES, save_hf_folder

    if quick or shape == "qwen2.5":
        return model_folder(folder, quick)[0]
    name, model_type, template, config = SHAPES[shape]
    save_hf_folder(folder, model_type, template, config)
    return name


def settings(base: Path, run_dir: Path, pairs: Path, steps: int, threads: int, precision: str,
             *extra: str) -> list[str]:
    return ["dpo", "data.builtin=[]", f"data.paths=[{pairs}]", f"model.init={base}", f"run.dir={run_dir}",
            f"seed={SEED}", "data.val_fraction=0", f"train.lora.rank={RANK}", f"train.lora.alpha={ALPHA}",
            "train.lora.dropout=0", f"train.lora.targets=[{','.join(TARGETS)}]", f"train.precision={precision}",
            "train.seq_len=512", f"train.batch_size={BATCH}", f"train.lr={LR}", f"train.min_lr={LR}",
            f"train.dpo.beta={BETA}", "train.dpo.sft_weight=0", f"train.max_steps={steps}", "train.max_minutes=null",
            "train.schedule=steps",
            "train.warmup_steps=0", "train.grad_clip=0", "train.weight_decay=0.01", "train.log_every=1",
            "train.eval_every=100000", "train.checkpoint_every=100000", f"train.threads={threads}", *extra]


def sequence_tokens(data: Path) -> float:
    """Mean tokens of a pair's two sequences (prompt and answer each), from the prepared lengths."""
    manifest = json.loads((data / "manifest.json").read_text())
    import numpy as np

    lengths = np.fromfile(data / manifest["splits"]["train.lengths"]["file"], dtype=np.uint32)
    return float(lengths.reshape(-1, 2).sum(1).mean())


def ours(base: Path, work: Path, name: str, pairs: Path, steps: int, warmup: int, threads: int, precision: str,
         *extra: str) -> dict:
    run_dir = work / name
    config = settings(base, run_dir, pairs, steps, threads, precision, *extra)
    aigc("prepare", *config)
    rss = aigc("train", *config, peak=True)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {line["step"]: line for line in lines if "loss" in line}
    seconds = by_step[steps]["elapsed_s"] - by_step[warmup]["elapsed_s"]
    per_pair = sequence_tokens(run_dir / "data")
    return dict(tokens_per_s=(steps - warmup) * BATCH * per_pair / seconds, peak_rss=rss, loss=by_step[steps]["loss"],
                per_pair=per_pair)


def theirs_worker(spec: dict) -> dict:
    """TRL's DPOTrainer with PEFT on the same folder, pairs, batch, steps and threads (see the module docstring)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(spec["threads"])
    bf16 = spec["precision"] == "bf16"
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 attn_implementation="sdpa")
    rows = [json.loads(line) for line in Path(spec["pairs"]).read_text().splitlines()]
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    args = DPOConfig(output_dir=spec["out"], beta=BETA, loss_type=["sigmoid"], learning_rate=LR,
                     lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=0.0, optim="adamw_torch",
                     per_device_train_batch_size=BATCH, max_steps=spec["steps"], bf16=bf16, use_cpu=True,
                     report_to=[], logging_steps=1, save_strategy="no", max_length=512, seed=SEED,
                     dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(spec["folder"]), callbacks=[Clock()],
                         peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                                                task_type="CAUSAL_LM"))
    started = time.perf_counter()
    trainer.train()
    seconds = ends[-1] - ends[spec["warmup"] - 1] if spec["warmup"] else ends[-1] - started
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return dict(tokens_per_s=(spec["steps"] - spec["warmup"]) * BATCH * spec["per_pair"] / seconds,
                peak_rss=int(peak.split()[1]) * 1024, loss=losses[-1] if losses else None)


def theirs(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the TRL + PEFT worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def quality(runs: Path) -> tuple[float, float, int]:
    """``aigc run dpo`` (after code and sft, each made if missing) in ``runs``'s parent: parse rates before, after."""
    for recipe in ("code", "sft", "dpo"):
        if recipe == "dpo" or not (runs / recipe / "checkpoints" / "latest").exists():
            done = subprocess.run([sys.executable, "-m", "aigc", "run", recipe], cwd=runs.parent, capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise SystemExit(f"aigc run {recipe} failed:\n{done.stderr[-4000:]}")
    report = json.loads((runs / "dpo" / "eval" / "report.json").read_text())
    return report["before"]["code"]["syntax_valid_rate"], report["code"]["syntax_valid_rate"], report["code"]["completions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tables", default="speed,orpo,quality")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shape", default="qwen2.5", choices=["qwen2.5", "smollm2"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                        help="bf16: the base stored and computed in bfloat16 (emulated, ~7x slower, on CPUs without "
                        "AVX-512 BF16 or AMX)")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(theirs_worker(json.loads(args.worker))))
        return
    tables = set(args.tables.split(","))
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    torch.set_num_threads(args.threads)
    print(f"{cpu_flags()}; torch {torch.__version__}")
    load = LoadWatch(threads=args.threads).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        name = shaped_folder(work / "hf", args.shape, args.quick)
        aigc("import", str(work / "hf"), f"run.dir={work / 'base'}")
        pairs = pairs_file(work / "pairs.jsonl")
        if "speed" in tables:
            mine = ours(work / "base", work, "dpo-lora", pairs, steps, warmup, args.threads, args.precision)
            peer = theirs(dict(folder=str(work / "hf"), pairs=str(pairs), out=str(work / "trl"), steps=steps,
                               warmup=warmup, threads=args.threads, per_pair=mine["per_pair"],
                               precision=args.precision))
            speed, memory = mine["tokens_per_s"] / peer["tokens_per_s"], mine["peak_rss"] / peer["peak_rss"]
            print(f"\nDPO with LoRA, {name}, {args.precision}, rank {RANK}, {BATCH} pairs a step ({mine['per_pair']:.0f} tokens a "
                  f"pair), {steps} steps ({warmup} not timed)\n")
            print("| side | tokens/s | peak RSS | loss at the last step |\n|---|---|---|---|")
            print(f"| aigc DPO + LoRA | {mine['tokens_per_s']:,.0f} | {mine['peak_rss'] / 1e6:,.0f} MB | {mine['loss']:.4f} |")
            print(f"| TRL {__import__('trl').__version__} + PEFT | {peer['tokens_per_s']:,.0f} | "
                  f"{peer['peak_rss'] / 1e6:,.0f} MB | {peer['loss']} |")
            verdict = "met" if speed >= SPEED_TARGET and memory <= 1 else "MISSED"
            print(f"| | **{speed:.2f}x** | **{memory:.2f}x** | |\n\ntarget {SPEED_TARGET}x at no more memory: {verdict}")
        if "orpo" in tables:
            print("\n| ours | tokens/s | peak RSS |\n|---|---|---|")
            for label, extra in (("DPO, LoRA", []), ("ORPO, LoRA", ["train.objective=orpo"]),
                                 ("DPO, full", ["train.lora.rank=null"]),
                                 ("ORPO, full", ["train.lora.rank=null", "train.objective=orpo"])):
                if label == "DPO, LoRA" and "speed" in tables:  # the run of the table above
                    run = mine
                else:
                    run = ours(work / "base", work, label.replace(", ", "-").lower(), pairs, steps, warmup,
                               args.threads, args.precision, *extra)
                print(f"| {label} | {run['tokens_per_s']:,.0f} | {run['peak_rss'] / 1e6:,.0f} MB |")
    if "quality" in tables and not args.quick:
        runs = (args.runs or Path(tempfile.mkdtemp()) / "runs").resolve()
        runs.mkdir(parents=True, exist_ok=True)
        before, after, count = quality(runs)
        gain = (after - before) * 100
        print(f"\naigc run dpo (runs in {runs}): held-out answers that parse, {count} prompts\n")
        print(f"| model | parse rate |\n|---|---|\n| sft (before) | {before:.1%} |\n| sft + DPO | {after:.1%} |")
        print(f"\ntarget: at least 10 points higher: {'met' if gain >= 10 else 'MISSED'} ({gain:+.1f} points)")
    print(load.verdict())


if __name__ == "__main__":
    main()
