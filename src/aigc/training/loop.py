"""The one training loop: budgeted steps, accumulation, clipping, schedule, eval, checkpoints, metrics.

A step is ``grad_accum`` micro-batches (shared between processes), one clipped AdamW update, and a
learning rate from :func:`~aigc.training.optim.learning_rate`. Every ``eval_every`` steps the val loss is
measured on fixed windows; every ``checkpoint_every`` steps (and at the end, on Ctrl-C/SIGTERM, and
when the loss stops being finite) a checkpoint is written. Losses and rates go to ``metrics.jsonl``.

:func:`_train` reads as the loop itself; :class:`Trainer` holds what a run carries from step to step.
What depends on the kind of data (the model's vocabulary and other data-derived settings, the samplers,
a data-fixed init) comes from the run's task (:mod:`aigc.tasks`), so nothing here asks what kind a run is.

Exact resume: the batch of a step depends only on (seed, step), and the checkpoint holds weights,
optimizer moments and every process's RNG state (:mod:`aigc.training.rng`), so a resumed CPU run
reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from aigc.checkpoint import SHARDS, Checkpoint, latest_valid, point, prune, save_checkpoint, staging_folder
from aigc.config import Config
from aigc.data.shards import read_manifest
from aigc.errors import TrainingError
from aigc.files import file_hash
from aigc.models import build_model
from aigc.pretrained.init import resolve_init
from aigc.tasks import task_for
from aigc.tasks.base import Objective
from aigc.training import distributed, finetune, memory, parallel, rng
from aigc.training.chunked_loss import frozen_head_cross_entropy
from aigc.training.metrics_log import METRICS, MetricsLog
from aigc.training.optim import build_optimizer, learning_rate
from aigc.training.stopping import StopRequest

__all__ = ["METRICS", "TrainResult", "Trainer", "train"]


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
            "use the same model.* settings (and model.init) to resume, or a new run.dir to start over"
        )
    if saved.train.lora != config.train.lora:
        raise TrainingError(
            f"{checkpoint} was trained with train.lora={saved.train.lora.model_dump()}, not "
            f"{config.train.lora.model_dump()}; use the same train.lora.* settings to resume, or a new run.dir"
        )


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def train(config: Config, resume: bool = False, log: Callable[[str], None] | None = None,
          on_evaluation: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train the run's model on its prepared shards; ``resume`` continues from the newest valid checkpoint.

    ``on_evaluation(step, val_loss)`` is called after every evaluation (``aigc tune`` prunes a trial from it
    by raising); an exception it raises ends the run there.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    env = distributed.setup(config.train.device)
    try:
        return _train(config, resume, log, env, on_evaluation)
    except RuntimeError as err:
        if _out_of_memory(err):
            raise TrainingError(
                f"a batch does not fit in memory ({err.__class__.__name__}); lower train.batch_size "
                f"(now {config.train.batch_size}) and raise train.grad_accum to keep the tokens per step"
            ) from None
        raise
    finally:
        env.close()


def _train(config: Config, resume: bool, log: Callable[[str], None], env: distributed.Distributed,
           on_evaluation: Callable[[int, float], None] | None = None) -> TrainResult:
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    config = resolve_init(config, log if env.is_main else lambda _: None)
    manifest = read_manifest(config.run_dir / "data")
    hashes = _data_hashes(config.run_dir, manifest)
    finetune.check_tokenizer(config, manifest)
    task = task_for(config)
    config = task.model_config(config, manifest)
    needed = memory.estimate(config, task.model_extras(), env.world)
    if env.world > 1 and env.is_main:
        log(needed.describe())
    memory.check_fits(needed, memory.free_memory(env.device))
    samplers = task.samplers(config, manifest, env.rank, env.world)
    if samplers[1] is None:
        log("the val split is too small for one evaluation batch: no evaluation")
    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = build_model(config.model, task.model_extras())
    task.init_model(model, manifest)
    checkpoint = latest_valid(config.run_dir, warn=log, training=True) if resume else None
    if resume and checkpoint is None:
        log(f"no checkpoint in {config.run_dir / 'checkpoints'} yet: starting from step 0")
    finetune.start_from_init(model, config, checkpoint is not None, log if env.is_main else lambda _: None)
    model.to(env.device)
    run = Trainer(config, env, model, samplers, hashes, log, checkpoint, on_evaluation,
                  task.objective(config, model, env.device))
    interrupted = False
    with StopRequest() as stop, run.bar:
        while run.step < tc.max_steps:
            elapsed, stop_requested = env.agree(run.elapsed(), stop.requested)  # rank 0's clock decides for all
            if elapsed >= run.budget_s:
                log(f"time budget of {tc.max_minutes} min reached at step {run.step}")
                if run.step == run.start_step and run.resumed_from is not None:
                    log(f"the run had trained {elapsed / 60:.1f} min already: to train longer, resume with a larger "
                        "train.max_minutes (the learning rate's cosine then spans the new budget)")
                break
            if stop_requested:
                interrupted = True
                break
            run.train_step(elapsed)
            run.record_step()
            improved = run.evaluation_due() and run.evaluate()
            if improved or run.step % tc.checkpoint_every == 0:
                run.save(best=improved)
        if not interrupted and run.final_evaluation_due() and run.evaluate():
            run.save(best=True)  # the budget ended the run between evaluations, on a new best
    if run.step > run.start_step and run.saved_step != run.step:
        run.save()
    return run.result(interrupted)


class Trainer:
    """A run in progress: model, optimizer, samplers and the counters a checkpoint carries.

    Every process holds one. Collectives (loss sums, the gradient reduction, the RNG gather in :meth:`save`)
    are reached by every process in the same order, since each decision below depends only on values all
    processes share (step numbers, all-reduced losses, rank 0's clock).
    """

    def __init__(self, config: Config, env: distributed.Distributed, model: nn.Module, samplers: tuple,
                 hashes: dict[str, str], log: Callable[[str], None], checkpoint: Checkpoint | None = None,
                 on_evaluation: Callable[[int, float], None] | None = None, objective: Objective | None = None):
        """Set up the optimizer, continue from ``checkpoint`` if given, open metrics.jsonl, start the clock.

        ``objective``: what training minimises, when the run's kind says (else next-token cross-entropy)."""
        self.config, self.tc, self.env, self.hashes, self.log = config, config.train, env, hashes, log
        self.on_evaluation, self.objective = on_evaluation, objective
        self.stats: dict[str, float] = {}  # the objective's statistics of the last micro-batch
        self.model = model
        self.train_data, self.val_data = samplers
        self.parallel = parallel.for_training(model, env, self.tc)  # before the optimizer: sharding swaps the weights
        self.optimizer = build_optimizer(model, self.tc, env.device)
        self.step = self.start_step = 0
        self.tokens = self.start_tokens = 0  # target tokens seen by all processes: now, and when this process began
        self.elapsed_before = 0.0  # seconds trained before this process began (on resume)
        self.best_val = math.inf
        self.resumed_from: Path | None = None
        self._restore(checkpoint)
        self.last_loss: float | None = None
        self.lr = self.rate = 0.0
        self.last_eval_step: int | None = None
        self.saved_step: int | None = None
        self.checkpoint_path: Path | None = None  # the newest checkpoint written (main process only)
        tc = self.tc
        resume_step = self.start_step if checkpoint is not None else None
        self.metrics = MetricsLog(config.run_dir / METRICS, env.is_main, resume_step)
        if env.is_main:
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            adapters = f" ({trained:,} trained in adapters)" if config.train.lora.enabled else ""
            log(f"model: {model.num_params():,} parameters{adapters}, {model.flops_per_token():,} FLOPs/token; "
                f"{env.world} process(es) on {env.device}")
        head = getattr(model, "lm_head", None)
        self.frozen_head = head is not None and not head.weight.requires_grad
        self.forward = torch.compile(self.parallel.forward) if tc.compile else self.parallel.forward
        self.autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
        self.budget_s = tc.max_minutes * 60 if tc.max_minutes else math.inf
        self.started = time.perf_counter()
        self.window_start, self.window_tokens = self.started, 0  # for tokens/s between log lines
        self.bar = tqdm(total=tc.max_steps, initial=self.start_step, desc="train", file=sys.stderr,
                        disable=not (env.is_main and sys.stderr.isatty()), dynamic_ncols=True, delay=0.5)
        model.train()

    def _restore(self, checkpoint: Checkpoint | None) -> None:
        """Weights, optimizer, counters and this process's RNG from ``checkpoint``; else seed a fresh start."""
        if checkpoint is None:
            torch.manual_seed(self.config.seed + self.env.rank)  # dropout masks differ between processes
            return
        _check_resumable(self.config, checkpoint.config, checkpoint.path)
        state = checkpoint.train_state()
        if (checkpoint.path / SHARDS).is_dir():
            self.parallel.load_shards(self.optimizer, checkpoint.path / SHARDS)
        elif self.parallel.sharded:
            raise TrainingError(f"{checkpoint.path} was written by a train.parallel=ddp run; resume it with "
                                "train.parallel=ddp, or start a sharded run from it with model.init")
        else:
            finetune.restore_trained_state(self.model, checkpoint)
            self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_before, self.best_val = state["step"], state["elapsed_s"], state["best_val_loss"]
        self.start_step, self.tokens = self.step, state.get("tokens", 0)
        self.start_tokens = self.tokens
        if not rng.restore(state["rng"], self.env, self.config.seed, self.step):
            self.log(f"rank {self.env.rank}: no saved RNG state for this process; seeding seed + rank + step")
        self.resumed_from = checkpoint.path
        self.log(f"resumed from {checkpoint.path} (step {self.step})")

    def elapsed(self) -> float:
        """Training seconds of the whole run, across resumes."""
        return self.elapsed_before + time.perf_counter() - self.started

    def loss(self, inputs: tuple[torch.Tensor | None, ...], targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the model's logits against ``targets`` (-1 = ignored), with label smoothing.

        ``inputs`` are the model's positional arguments (None where a sampler leaves one at its default). When
        the output projection is frozen (LoRA) the loss is taken from the hidden states in chunks, never holding
        every logit (:mod:`~aigc.training.chunked_loss`)."""
        args = [t if t is None else self._to_device(t) for t in inputs]
        targets = self._to_device(targets)
        if self.objective is not None:
            loss, self.stats = self.objective(self.forward, args, targets)
            return loss
        if self.frozen_head:
            hidden = self.forward(*args, hidden=True)
            return frozen_head_cross_entropy(hidden, self.model.lm_head.weight, targets, self.tc.label_smoothing)
        logits = self.forward(*args)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=-1, label_smoothing=self.tc.label_smoothing)

    def weight(self, targets: torch.Tensor) -> int:
        """What a micro-batch counts for in its step's mean loss: its targets (or what the objective averages over)."""
        return self.objective.weight(targets) if self.objective is not None else int((targets >= 0).sum())

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on the run's device: on a GPU copied from pinned memory without waiting, so the copy overlaps
        the work already queued."""
        if self.env.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.env.device, non_blocking=True)

    def train_step(self, elapsed: float) -> None:
        """One optimizer step: this process's micro-batches, the clipped global gradient, AdamW.

        A non-finite loss or gradient saves the state before the step and raises :class:`TrainingError`.
        """
        tc = self.tc
        progress = (self.step - tc.warmup_steps) / max(tc.max_steps - tc.warmup_steps, 1)
        if tc.schedule == "time":  # wall-clock dependent: ends on time, not bit-exact on resume
            progress = max(progress, elapsed / self.budget_s)  # whichever budget runs out first ends the cosine
        self.lr = learning_rate(tc, self.step, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        batches = self.train_data.step_batches(self.step)
        # Each micro-batch's mean loss counts by its share of the step's targets (on every process), so a step
        # is one mean over all its targets even when micro-batches hold different numbers (packed conversations).
        counts = [self.weight(targets) for _, targets in batches]
        tokens = sum(int((targets >= 0).sum()) for _, targets in batches)  # what tokens/s counts
        step_weight_all, step_tokens_all = (int(x) for x in self.env.all_sum(sum(counts), tokens))
        loss_sum = 0.0
        for micro, ((inputs, targets), count) in enumerate(zip(batches, counts)):
            # gradients are reduced between processes on the last micro-batch only, and averaged over them
            share = count * self.env.world / max(step_weight_all, 1)
            with self.parallel.micro_batch(sync=micro == len(batches) - 1):
                with self.autocast:
                    loss = self.loss(inputs, targets)
                    loss = loss if count else torch.nan_to_num(loss)  # no targets here: the mean is 0/0
                (loss * share).backward()
            loss_sum += loss.item() * share
        (loss_total,) = self.env.all_sum(loss_sum)
        self.last_loss = loss_total / self.env.world
        norm = self.parallel.clip(tc.grad_clip if tc.grad_clip > 0 else math.inf)
        if not (math.isfinite(self.last_loss) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            saved = self.save(elapsed=elapsed)
            where = f"; the last good state is saved in {saved}" if saved else ""
            raise TrainingError(
                f"the loss became {self.last_loss} at step {self.step + 1}{where}. Lower train.lr (now {tc.lr}), keep "
                "train.grad_clip on, or use train.precision=fp32, then continue with --resume"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window_tokens += step_tokens_all
        self.tokens += step_tokens_all
        self.bar.update(1)

    def record_step(self) -> None:
        """Every ``log_every`` steps and at the last: loss, lr and tokens/s to metrics.jsonl and the bar."""
        now = time.perf_counter()
        if self.step % self.tc.log_every == 0 or self.step == self.tc.max_steps:
            self.rate = self.window_tokens / max(now - self.window_start, 1e-9)
            self.window_start, self.window_tokens = now, 0
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}", tok_s=f"{self.rate:,.0f}")
            self.metrics.write(step=self.step, loss=self.last_loss, lr=self.lr, tokens_per_s=self.rate,
                               elapsed_s=self.elapsed_before + now - self.started, tokens=self.tokens)

    def evaluation_due(self) -> bool:
        return self.val_data is not None and (self.step % self.tc.eval_every == 0 or self.step == self.tc.max_steps)

    def final_evaluation_due(self) -> bool:
        """At the end of a run that trained since its last evaluation (a time budget stops between them)."""
        return self.val_data is not None and self.step > self.start_step and self.last_eval_step != self.step

    def evaluate(self) -> bool:
        """Measure the val loss on fixed batches and record it; True when it is the best so far."""
        self.model.eval()
        total = count = 0.0
        stats: dict[str, float] = {}  # the objective's statistics, summed over batches
        batches = list(self.val_data.eval_batches(self.tc.eval_batches))  # this process's share
        with torch.no_grad(), self.autocast:
            for i in range(self.parallel.forward_rounds(len(batches))):
                if i < len(batches):
                    total += self.loss(*batches[i]).item()
                    count += 1
                    stats = {name: stats.get(name, 0.0) + value for name, value in self.stats.items()}
                else:  # a pass only to keep the processes' sharded forwards in step: not counted
                    self.loss(*(batches or self.train_data.step_batches(self.step))[0])
        self.model.train()
        names = self.objective.statistics if self.objective is not None else ()  # the same on every process
        total, count, *sums = self.env.all_sum(total, count, *(stats.get(name, 0.0) for name in names))
        val_loss = total / count
        improved = val_loss < self.best_val
        self.best_val, self.last_eval_step = min(self.best_val, val_loss), self.step
        self.metrics.write(step=self.step, val_loss=val_loss, elapsed_s=self.elapsed(),
                           **{f"val_{name}": value / count for name, value in zip(names, sums)})
        if self.bar.disable and self.env.is_main:
            self.log(f"step {self.step}: loss {self.last_loss:.4f}, val loss {val_loss:.4f}, {self.rate:,.0f} tokens/s")
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}", val=f"{val_loss:.4f}", tok_s=f"{self.rate:,.0f}")
        if self.on_evaluation is not None:
            self.on_evaluation(self.step, val_loss)
        return improved

    def save(self, best: bool = False, elapsed: float | None = None) -> Path | None:
        """Checkpoint the current step; every process takes part (the RNG states are gathered to rank 0).

        Returns the checkpoint's path on the main process (the one that writes), None on the others.
        """
        rng_states = rng.gather(self.env)
        self.saved_step = self.step
        staged = []
        if self.parallel.sharded:  # every process writes its shard into the folder rank 0 renames into place
            folder = staging_folder(self.config.run_dir, self.step)
            if self.env.is_main:
                shutil.rmtree(folder, ignore_errors=True)
            self.env.barrier()
            staged = self.parallel.save_shards(self.optimizer, folder / SHARDS)
        weights = self.parallel.full_state()
        if not self.env.is_main:
            return None
        state = {"optimizer": None if staged else self.optimizer.state_dict(), "step": self.step,
                 "elapsed_s": self.elapsed() if elapsed is None else elapsed, "best_val_loss": self.best_val,
                 "tokens": self.tokens, "rng": rng_states}
        path = save_checkpoint(self.config.run_dir, self.step, self.config,
                               finetune.trained_state(self.model, self.config, weights), state, self.hashes, staged)
        if best:
            point(path.parent, "best", path.name)
        prune(self.config.run_dir, self.tc.keep_checkpoints)
        self.checkpoint_path = path
        return path

    def result(self, interrupted: bool) -> TrainResult:
        seconds = time.perf_counter() - self.started
        trained = self.step > self.start_step
        return TrainResult(
            self.step, self.last_loss, self.best_val if math.isfinite(self.best_val) else None,
            self.checkpoint_path if trained else self.resumed_from, interrupted,
            (self.tokens - self.start_tokens) / seconds if seconds > 0 and trained else 0.0,
        )
