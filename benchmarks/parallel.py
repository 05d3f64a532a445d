"""DDP against FSDP: a ~120M-parameter GPT trained on 2 CPU processes (gloo), tokens/s and memory per process.

The same run, data and steps under ``torchrun --nproc_per_node 2`` with ``train.parallel=ddp`` and ``=fsdp``. Each
process reports, at the end of its last step and before the final checkpoint (whose consolidation gathers the whole
model on rank 0): the bytes of the weights and AdamW moments it holds (its shards under FSDP) and its peak resident
memory. Tokens/s is the mean of the steps after the first (which warms the allocator), from metrics.jsonl.

Targets (issue 34): FSDP's weights + optimizer state per process at most 0.6x DDP's, at no less than 0.8x its tokens/s.

    python benchmarks/parallel.py [--steps 4] [--layers 16] [--batch 8] [--seq 256]

Each all-gather and reduce-scatter moves the whole model whatever the batch, while compute grows with it: FSDP's
cost against DDP (whose all-reduce overlaps the backward pass) is largest at small micro-batches, and on a CPU,
where gloo's copies compete with the compute for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from loadwatch import LoadWatch, cpu_flags  # benchmarks/loadwatch.py, beside this script

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
MiB = 1 << 20

# Run by torchrun in place of `python -m aigc`: reports what this process holds when training ends.
REPORTER = textwrap.dedent('''
    import json, os, resource, sys
    import torch
    from aigc.cli import main
    from aigc.training import loop

    def local_bytes(tensors):
        total = 0
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            total += t.numel() * t.element_size()
        return total

    save = loop.Trainer.save

    def reporting(self, *args, **kwargs):
        if not getattr(self, "reported", False):
            self.reported = True
            moments = [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
            print("REPORT " + json.dumps({"rank": self.env.rank,
                                          "weights": local_bytes({id(p): p for p in self.model.parameters()}.values()),
                                          "optimizer": local_bytes(moments),
                                          "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
                  file=sys.stderr, flush=True)
        return save(self, *args, **kwargs)

    loop.Trainer.save = reporting
    sys.exit(main(sys.argv[1:]))
''')


def run(parallel: str, root: Path, settings: list[str], script: Path) -> dict:
    run_dir = root / parallel
    run_dir.mkdir()
    for name in ("data", "tokenizer.json"):
        (run_dir / name).symlink_to(root / "prepared" / name)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), "train", "text",
                           f"run.dir={run_dir}", *settings, f"train.parallel={parallel}"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{parallel} failed:\n{done.stderr[-3000:]}")
    reports = [json.loads(line.split(" ", 1)[1]) for line in done.stderr.splitlines() if line.startswith("REPORT ")]
    rates = [r["tokens_per_s"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "tokens_per_s" in r and r["step"] > 1]
    parameters = next(line for line in done.stderr.splitlines() if line.startswith("model: "))
    return {"reports": sorted(reports, key=lambda r: r["rank"]), "tokens_per_s": sum(rates) / len(rates),
            "parameters": parameters.split(" parameters")[0].removeprefix("model: ")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, default=16, help="16 x 768 wide: ~113M parameters")
    parser.add_argument("--batch", type=int, default=8, help="sequences per micro-batch on each process")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    args = parser.parse_args()
    from aigc import load_config, prepare

    settings = [f"data.paths=[{SHAKESPEARE}]", f"model.n_layer={args.layers}", "model.n_head=12", "model.n_embd=768",
                f"model.block_size={args.seq}", f"train.batch_size={args.batch}", "train.grad_accum=2", "train.threads=1",
                f"train.max_steps={args.steps}", "train.max_minutes=null", "train.schedule=steps",
                "train.warmup_steps=2", "train.log_every=1", "train.eval_every=100000", "train.eval_batches=1",
                "train.checkpoint_every=100000", "train.device=cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(load_config("text", [f"run.dir={root / 'prepared'}", *settings]))
        script = root / "reporter.py"
        script.write_text(REPORTER, encoding="utf-8")
        load = LoadWatch(threads=2).start()
        results = {parallel: run(parallel, root, settings, script) for parallel in ("ddp", "fsdp")}
    print(f"\n{cpu_flags()}; torch {torch.__version__}; 2 processes (gloo), 1 thread each")
    print(f"GPT {args.layers} layers x 768, {results['ddp']['parameters']} parameters; per step 2 micro-batches (one "
          f"per process) of {args.batch} x {args.seq} tokens; fp32 AdamW; {args.steps} steps, the first not timed\n")
    print("| parallel | rank | weights, MiB | optimizer state, MiB | weights + optimizer | peak RSS, MiB | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for parallel, result in results.items():
        for report in result["reports"]:
            held = report["weights"] + report["optimizer"]
            print(f"| {parallel} | {report['rank']} | {report['weights'] / MiB:,.0f} | {report['optimizer'] / MiB:,.0f} "
                  f"| {held / MiB:,.0f} | {report['peak_rss'] / MiB:,.0f} | {result['tokens_per_s']:,.0f} |")
    held = {p: max(r["weights"] + r["optimizer"] for r in results[p]["reports"]) for p in results}
    ratio = held["fsdp"] / held["ddp"]
    speed = results["fsdp"]["tokens_per_s"] / results["ddp"]["tokens_per_s"]
    print(f"\nFSDP / DDP, weights + optimizer per process: {ratio:.2f}x (target <= 0.6x: "
          f"{'met' if ratio <= 0.6 else 'MISSED'}); tokens/s: {speed:.2f}x (target >= 0.8x: "
          f"{'met' if speed >= 0.8 else 'MISSED'})")
    print(load.verdict())


if __name__ == "__main__":
    main()
