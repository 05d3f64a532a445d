"""The one training loop: budgeted steps, accumulation, clipping, schedule, eval, checkpoints, metrics.

A step is ``grad_accum`` micro-batches (shared between processes), one clipped AdamW update, and a
learning rate from :func:`~aigc.training.optim.learning_rate`. Every ``eval_every`` steps the val loss is
measured on fixed windows; every ``checkpoint_every`` steps (and at the end, on Ctrl-C/SIGTERM, and
when the loss stops being finite) a checkpoint is written. Losses and rates go to ``metrics.jsonl``.

Exact resume: the batch of a step depends only on (seed, step), and the checkpoint holds weights,
optimizer moments and RNG states, so a resumed CPU run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from aigc.checkpoint import latest_valid, point, prune, save_checkpoint, step_name
from aigc.config import Config
from aigc.data.loader import WindowSampler
from aigc.data.pairs import PairSampler, split_pairs, target_start
from aigc.images.sampler import PrefixSampler
from aigc.data.shards import open_split, read_manifest
from aigc.errors import TrainingError
from aigc.files import file_hash
from aigc.models import build_model
from aigc.training import distributed
from aigc.training.optim import build_optimizer, learning_rate

METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    steps: int
    train_loss: float | None
    best_val_loss: float | None
    checkpoint: Path | None
    interrupted: bool
    tokens_per_s: float

    def summary(self) -> str:
        parts = [f"trained {self.steps} steps"]
        if self.train_loss is not None:
            parts.append(f"train loss {self.train_loss:.4f}")
        if self.best_val_loss is not None:
            parts.append(f"best val loss {self.best_val_loss:.4f}")
        parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        text = ", ".join(parts)
        if self.checkpoint:
            text += f"\ncheckpoint: {self.checkpoint}"
        if self.interrupted:
            text += "\ninterrupted: continue with `aigc train ... --resume`"
        return text


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps; a second SIGINT aborts."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _data_hashes(run_dir: Path, manifest: dict) -> dict[str, str]:
    """Hashes that tie a checkpoint to its data and tokenizer, checking the tokenizer on disk on the way."""
    tokenizer_path = run_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise TrainingError(f"{tokenizer_path} is missing; run `aigc prepare` with this recipe first")
    tokenizer_hash = file_hash(tokenizer_path)
    if tokenizer_hash != manifest["tokenizer"]["sha256"]:
        raise TrainingError(
            f"{run_dir / 'data' / 'manifest.json'} was made with a different tokenizer than {tokenizer_path}; "
            "run `aigc prepare` again so the shards and the tokenizer match"
        )
    return {"manifest_sha256": file_hash(run_dir / "data" / "manifest.json"), "tokenizer_sha256": tokenizer_hash}


def _check_resumable(config: Config, saved: Config, checkpoint: Path) -> None:
    if saved.model != config.model:
        raise TrainingError(
            f"{checkpoint} holds a model with different settings ({saved.model.model_dump(exclude_defaults=True)}); "
            "use the same model.* settings to resume, or a new run.dir to start over"
        )


def _samplers(config: Config, manifest: dict, env: distributed.Distributed):
    """Train and val samplers for the shards' kind; val is None when it cannot fill one batch."""
    tc, data_dir, block = config.train, config.run_dir / "data", config.model.block_size
    if manifest.get("kind") in ("pairs", "images"):
        eot = target_start(manifest)

        def pairs(split):
            return split_pairs(data_dir, manifest, split)

        if manifest["kind"] == "images":
            prefix = manifest["image"]["prefix"]
            train = PrefixSampler(pairs("train"), eot, prefix, tc.batch_size, tc.grad_accum, config.seed, env.rank,
                                  env.world, condition_dropout=tc.condition_dropout)
            val_pairs = pairs("val")
            val = (PrefixSampler(val_pairs, eot, prefix, tc.batch_size, env.world, config.seed, env.rank, env.world, "val")
                   if len(val_pairs) >= tc.batch_size else None)
            return train, val
        train = PairSampler(pairs("train"), eot, block, tc.batch_size, tc.grad_accum, config.seed, env.rank, env.world)
        val_pairs = pairs("val")
        val = (PairSampler(val_pairs, eot, block, tc.batch_size, env.world, config.seed, env.rank, env.world, "val")
               if len(val_pairs) >= tc.batch_size else None)
        return train, val
    train = WindowSampler(open_split(data_dir, "train", manifest), block, tc.batch_size, tc.grad_accum, config.seed,
                          env.rank, env.world, "train")
    val_tokens = open_split(data_dir, "val", manifest)
    val = (WindowSampler(val_tokens, block, tc.batch_size, env.world, config.seed, env.rank, env.world, "val")
           if len(val_tokens) >= block + 2 else None)
    return train, val


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (main process only); on resume, drops lines past the resume step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def train(config: Config, resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train the run's model on its prepared shards; ``resume`` continues from the newest valid checkpoint."""
    log = log or (lambda line: print(line, file=sys.stderr))
    env = distributed.setup(config.train.device)
    try:
        return _train(config, resume, log, env)
    except RuntimeError as err:
        if _out_of_memory(err):
            raise TrainingError(
                f"a batch does not fit in memory ({err.__class__.__name__}); lower train.batch_size "
                f"(now {config.train.batch_size}) and raise train.grad_accum to keep the tokens per step"
            ) from None
        raise
    finally:
        env.close()


def _train(config: Config, resume: bool, log: Callable[[str], None], env: distributed.Distributed) -> TrainResult:
    tc = config.train
    run_dir = config.run_dir
    if tc.threads:
        torch.set_num_threads(tc.threads)
    manifest = read_manifest(run_dir / "data")
    hashes = _data_hashes(run_dir, manifest)
    image = manifest.get("image")
    vocab = manifest.get("model_vocab_size") or manifest["tokenizer"]["vocab_size"]
    if config.model.vocab_size is None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"vocab_size": vocab})})
    elif config.model.vocab_size < vocab:
        raise TrainingError(f"model.vocab_size={config.model.vocab_size} is below the data's {vocab} tokens")
    if image:  # pixel positions, caption length and palette come from the data, like the vocabulary
        update = {"image_size": image["size"], "image_colors": len(image["palette"]), "image_prefix": image["prefix"]}
        config = config.model_copy(update={"model": config.model.model_copy(update=update)})
        needed = image["prefix"] + image["size"] ** 2 - 1
        if config.model.block_size < needed:
            raise TrainingError(f"model.block_size={config.model.block_size} is too short for a {image['prefix']}-token "
                                f"caption and {image['size']}x{image['size']} pixels; set model.block_size={needed} or more")
    if (manifest.get("kind") == "pairs") != (config.model.kind == "seq2seq"):
        raise TrainingError(f"model.kind={config.model.kind} cannot train on data.kind={manifest.get('kind', 'text')} "
                            "shards; use model.kind=seq2seq with data.kind=pairs, or gpt with text or images")
    train_data, val_data = _samplers(config, manifest, env)
    if val_data is None:
        log("the val split is too small for one evaluation batch: no evaluation")

    torch.manual_seed(config.seed)
    model = build_model(config.model).to(env.device)
    if image:
        model.palette.copy_(torch.tensor(image["palette"], dtype=torch.uint8))
    optimizer = build_optimizer(model, tc, env.device)
    start_step, elapsed_before, best_val, resumed_tokens = 0, 0.0, math.inf, 0
    checkpoint = latest_valid(run_dir, warn=log) if resume else None
    if checkpoint is not None:
        _check_resumable(config, checkpoint.config, checkpoint.path)
        model.load_state_dict(checkpoint.model_state())
        state = checkpoint.train_state()
        optimizer.load_state_dict(state["optimizer"])
        start_step, elapsed_before, best_val = state["step"], state["elapsed_s"], state["best_val_loss"]
        resumed_tokens = state.get("tokens", 0)
        _set_rng_state(state["rng"], env.device)
        log(f"resumed from {checkpoint.path} (step {start_step})")
    else:
        if resume:
            log(f"no checkpoint in {run_dir / 'checkpoints'} yet: starting from step 0")
        torch.manual_seed(config.seed + env.rank)  # dropout masks differ between processes
    metrics = MetricsLog(run_dir / METRICS, env.is_main, start_step if checkpoint is not None else None)
    if env.is_main:
        log(f"model: {model.num_params():,} parameters, {model.flops_per_token():,} FLOPs/token; "
            f"{env.world} process(es) on {env.device}")

    ddp = DistributedDataParallel(model) if env.world > 1 else None
    forward = ddp or model
    if tc.compile:
        forward = torch.compile(forward)
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    tokens_seen = resumed_tokens

    def loss_of(inputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the model's logits against ``targets`` (-1 = ignored), with label smoothing."""
        logits = forward(*(t.to(env.device) for t in inputs))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.to(env.device).reshape(-1),
                               ignore_index=-1, label_smoothing=tc.label_smoothing)
    budget_s = tc.max_minutes * 60 if tc.max_minutes else math.inf

    def save(step: int, elapsed: float, best: bool = False) -> Path | None:
        if not env.is_main:
            return None
        state = {"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed, "best_val_loss": best_val,
                 "tokens": tokens_seen, "rng": _rng_state(env.device)}
        path = save_checkpoint(run_dir, step, config, model.state_dict(), state, hashes)
        if best:
            point(path.parent, "best", path.name)
        prune(run_dir, tc.keep_checkpoints)
        return path

    def evaluate() -> float:
        model.eval()
        total = count = 0.0
        with torch.no_grad(), autocast:
            for inputs, targets in val_data.eval_batches(tc.eval_batches):
                total += loss_of(inputs, targets).item()
                count += 1
        model.train()
        total, count = env.all_sum(total, count)
        return total / count

    def evaluate_and_log(at_step: int) -> bool:
        """Measure and record the val loss; True when it is the best so far."""
        nonlocal best_val, last_eval_step
        val_loss = evaluate()
        improved = val_loss < best_val
        best_val, last_eval_step = min(best_val, val_loss), at_step
        metrics.write(step=at_step, val_loss=val_loss, elapsed_s=elapsed_before + time.perf_counter() - started)
        if bar.disable and env.is_main:
            log(f"step {at_step}: loss {last_loss:.4f}, val loss {val_loss:.4f}, {rate:,.0f} tokens/s")
        bar.set_postfix(loss=f"{last_loss:.4f}", val=f"{val_loss:.4f}", tok_s=f"{rate:,.0f}")
        return improved

    step, last_loss, checkpoint_path, interrupted, last_eval_step = start_step, None, None, False, None
    started = time.perf_counter()
    window_start, window_tokens, rate = started, 0, 0.0
    bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", file=sys.stderr, disable=not (env.is_main and sys.stderr.isatty()),
               dynamic_ncols=True, delay=0.5)
    model.train()
    with StopRequest() as stop, bar:
        while step < tc.max_steps:
            elapsed = elapsed_before + time.perf_counter() - started
            if elapsed >= budget_s:
                log(f"time budget of {tc.max_minutes} min reached at step {step}")
                break
            if env.any(stop.requested):
                interrupted = True
                break
            if tc.schedule == "time":  # wall-clock dependent: ends on time, not bit-exact on resume
                progress = elapsed / budget_s
            else:
                progress = (step - tc.warmup_steps) / max(tc.max_steps - tc.warmup_steps, 1)
            lr = learning_rate(tc, step, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = 0.0, 0
            batches = train_data.step_batches(step)
            for micro, (inputs, targets) in enumerate(batches):
                sync = micro == len(batches) - 1
                context = ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext()
                step_tokens += int((targets >= 0).sum())
                with context, autocast:
                    loss = loss_of(inputs, targets)
                with context:
                    (loss / len(batches)).backward()
                loss_sum += loss.item()
            (loss_total,) = env.all_sum(loss_sum)
            last_loss = loss_total / tc.grad_accum
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
            if not (math.isfinite(last_loss) and torch.isfinite(norm)):
                optimizer.zero_grad(set_to_none=True)
                saved = save(step, elapsed)
                where = f"; the last good state is saved in {saved}" if saved else ""
                raise TrainingError(
                    f"the loss became {last_loss} at step {step + 1}{where}. Lower train.lr (now {tc.lr}), keep "
                    "train.grad_clip on, or use train.precision=fp32, then continue with --resume"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            (step_tokens_all,) = env.all_sum(step_tokens)
            window_tokens += step_tokens_all
            tokens_seen += step_tokens_all
            bar.update(1)
            now = time.perf_counter()
            if step % tc.log_every == 0 or step == tc.max_steps:
                rate = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{rate:,.0f}")
                metrics.write(step=step, loss=last_loss, lr=lr, tokens_per_s=rate,
                              elapsed_s=elapsed_before + now - started, tokens=tokens_seen)
            improved = False
            if val_data is not None and (step % tc.eval_every == 0 or step == tc.max_steps):
                improved = evaluate_and_log(step)
            if improved or step % tc.checkpoint_every == 0:
                checkpoint_path = save(step, elapsed_before + time.perf_counter() - started, best=improved)
        if val_data is not None and step > start_step and not interrupted and last_eval_step != step:
            if evaluate_and_log(step):  # the budget ended the run between evaluations
                checkpoint_path = save(step, elapsed_before + time.perf_counter() - started, best=True)
    if step > start_step and (checkpoint_path is None or checkpoint_path.name != step_name(step)):
        checkpoint_path = save(step, elapsed_before + time.perf_counter() - started)
    elif checkpoint is not None and checkpoint_path is None:
        checkpoint_path = checkpoint.path
    seconds = time.perf_counter() - started
    done = step - start_step
    return TrainResult(step, last_loss, best_val if math.isfinite(best_val) else None, checkpoint_path, interrupted,
                       (tokens_seen - resumed_tokens) / seconds if seconds > 0 and done else 0.0)
