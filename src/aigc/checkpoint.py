"""Checkpoint directories: self-describing, written atomically, loaded without unpickling code.

::

    checkpoints/step_000500/
        config.json         the whole run config (model.vocab_size filled in)
        model.safetensors   weights (a tied output projection is stored once)
        tokenizer.json      the tokenizer the model was trained with
        chat.json           the chat template, when the run has one (imported, or fine-tuned from such a model)
        train_state.pt      optimizer, step, RNG states, elapsed time; tensors and plain types only
        shards/             a train.parallel=fsdp run's weights and optimizer state, in torch.distributed.checkpoint
                            format, one file per process (its train_state.pt then holds no optimizer)
        meta.json           format and code version, data manifest and tokenizer hashes, file hashes
    checkpoints/latest -> step_000500      checkpoints/best -> step_000400

A LoRA run (``train.lora.rank``) stores only its adapters, in PEFT's files: ``adapter_model.safetensors``
and ``adapter_config.json`` instead of ``model.safetensors``; its base is ``model.init``'s weights. So
``peft.PeftModel.from_pretrained(base, checkpoint_folder)`` loads a checkpoint as it is.

A checkpoint is built in a hidden temporary folder and renamed into place, so a crash never leaves a
half-written one under a real name; ``meta.json`` holds the SHA-256 of every file, so a truncated or
corrupted file is caught on load with the file's name.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from aigc import __version__
from aigc.chat_template import CHAT_FILE
from aigc.config import Config, validate_config
from aigc.errors import CheckpointError
from aigc.files import file_hash, read_json, write_json
from aigc.models import empty_model
from aigc.models.gpt import InputExtras
from aigc.models.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_lora, available_targets, load_peft_state,
                              merge_lora, peft_config)
from aigc.tokenizer import TARGET_TOKENIZER

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
SHARDS = "shards"  # in a sharded (train.parallel=fsdp) run's checkpoint: its training state, one file per process
GGUF_CACHE = ".gguf"  # in checkpoints/: each checkpoint's GGUF exports for --backend llamacpp, named <step>-<hash>-<type>


def weights_file(config: Config) -> str:
    """The checkpoint file that holds the trained tensors: the whole model's, or a LoRA run's adapters."""
    return ADAPTER_WEIGHTS if config.train.lora.enabled else "model.safetensors"


@dataclass
class Checkpoint:
    path: Path
    config: Config
    meta: dict[str, Any]

    @property
    def is_adapter(self) -> bool:
        """A LoRA checkpoint: adapters only, on the weights of ``model.init``."""
        return self.config.train.lora.enabled

    def model_state(self) -> dict[str, torch.Tensor]:
        """The stored tensors: the model's (our names), or a LoRA run's adapters (PEFT's names)."""
        state = load_file(self.path / weights_file(self.config))
        if not self.is_adapter and self.config.model.tie_embeddings and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["wte.weight"]
        return state

    def load_model(self, device: str = "cpu", merge: bool = True, base: torch.nn.Module | None = None,
                   extras: InputExtras | None = None) -> torch.nn.Module:
        """The checkpoint's model with its weights, on ``device``, in eval mode, in the dtype they were stored in
        (float32 for trained runs; an imported model may be bfloat16).

        A LoRA checkpoint loads its base (``model.init``, or ``base`` when the caller already holds it: several
        adapters then share its tensors) and its adapters on top, folded into the weights when ``merge`` and the
        base is float32 (folded into bfloat16 weights, small updates would round away: they stay beside them).
        ``extras``: what the run's kind adds to a GPT's input (:meth:`aigc.tasks.base.Task.model_extras`).
        """
        if self.is_adapter:
            return self._load_adapted(device, merge, base)
        model = empty_model(self.config.model, extras)  # every tensor is overwritten by the checkpoint's
        expected = model.state_dict().keys()  # runs saved before a kind's extras were a module kept them at the top
        state = {f"extras.{k}" if k not in expected and f"extras.{k}" in expected else k: v
                 for k, v in self.model_state().items()}
        stored = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
        if stored != torch.float32:
            model.to(stored)
        model.load_state_dict(state)
        return model.to(device).eval()

    def _load_adapted(self, device: str, merge: bool, base: torch.nn.Module | None) -> torch.nn.Module:
        if base is None:
            model = self.load_base(device)
        else:  # the same modules around the caller's tensors: adapters of one base share its memory
            if merge:
                raise ValueError("adapters are merged into a base of their own, not into a shared one")
            model = copy.deepcopy(base, {id(t): t for t in itertools.chain(base.parameters(), base.buffers())})
        return self._with_adapters(model, merge and next(model.parameters()).dtype == torch.float32).to(device)

    def _with_adapters(self, model: torch.nn.Module, merge: bool) -> torch.nn.Module:
        apply_lora(model, self.config.train.lora)
        load_peft_state(model, self.model_state())
        if merge:
            merge_lora(model)
        return model.eval()

    def load_merged(self) -> torch.nn.Module:
        """The model as one set of weights, to hand to another engine (a file, llama.cpp): a LoRA run's adapters
        folded into its base, widened to float32 for that when the base is not (folded into bfloat16 weights,
        small updates would round away)."""
        if not self.is_adapter:
            return self.load_model()
        return self._with_adapters(self.load_base().float(), merge=True)

    def stored_precision(self) -> str:
        """The safetensors type of the floating weights ("F32", "BF16", ...) from the file's header; a LoRA run's
        merged model (:meth:`load_merged`) is float32."""
        if self.is_adapter:
            return "F32"
        with safe_open(self.path / weights_file(self.config), "pt") as weights:
            types = {weights.get_slice(key).get_dtype() for key in weights.keys()}
        return next((t for t in ("BF16", "F16", "F32") if t in types), "F32")

    def base_identity(self) -> str:
        """What a LoRA checkpoint's base is, whatever folder holds it: its files' SHA-256 (each fine-tuned run links
        its base into ``<run>/base``, so runs on one base have different paths to the same bytes)."""
        meta = Path(self.config.model.init) / "meta.json"
        return json.dumps(read_json(meta)["files"], sort_keys=True) if meta.is_file() else str(self.config.model.init)

    def load_base(self, device: str = "cpu") -> torch.nn.Module:
        """A LoRA checkpoint's base model (``model.init``), with a clear error when it cannot be loaded."""
        try:
            return load_checkpoint(self.config.model.init).load_model(device)
        except CheckpointError as err:
            raise CheckpointError(f"{self.path} holds LoRA adapters for the base model {self.config.model.init}, "
                                  f"which cannot be loaded: {err}") from None

    def train_state(self) -> dict[str, Any]:
        return torch.load(self.path / "train_state.pt", map_location="cpu", weights_only=True)


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def staging_folder(run_dir: Path, step: int) -> Path:
    """The hidden folder the checkpoint of ``step`` is built in before it is renamed into place."""
    return run_dir / CHECKPOINTS / f".tmp-{step_name(step)}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    config: Config,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    hashes: dict[str, str],
    staged: list[str] | None = None,
) -> Path:
    """Write ``<run>/checkpoints/step_NNNNNN`` atomically and point ``latest`` at it; return its path.

    ``model_state``: the trained tensors (:func:`trained_state`); a LoRA run's also get PEFT's adapter config.
    ``staged``: files the run's processes already wrote into :func:`staging_folder` (a sharded run's training
    state, :mod:`aigc.training.parallel`), paths relative to it; they are hashed and moved in with the rest.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(step)
    tmp = staging_folder(run_dir, step)
    if not staged:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(exist_ok=True)
    weights = dict(model_state)
    if config.model.tie_embeddings:
        weights.pop("lm_head.weight", None)  # same storage as wte.weight; safetensors stores a tensor once
    files = ["config.json", weights_file(config), "tokenizer.json", "train_state.pt"]
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / files[1]),
              metadata={"format": "pt"})
    if config.train.lora.enabled:
        lora = config.train.lora
        write_json(tmp / ADAPTER_CONFIG, peft_config(lora, lora.targets or available_targets(config.model),
                                                     config.model, str(config.model.init)))
        files.append(ADAPTER_CONFIG)
    torch.save(train_state, tmp / "train_state.pt")
    write_json(tmp / "config.json", config.model_dump(mode="json"))
    shutil.copyfile(run_dir / "tokenizer.json", tmp / "tokenizer.json")
    for name in (TARGET_TOKENIZER, CHAT_FILE):  # pairs with a tokenizer per side; a run with a chat template
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, tmp / name)
            files.append(name)
    meta = {
        "format": FORMAT_VERSION,
        "aigc_version": __version__,
        "torch_version": torch.__version__,
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **hashes,
        "files": {name: file_hash(tmp / name) for name in files},
        "training_files": {name: file_hash(tmp / name) for name in staged or []},
    }
    write_json(tmp / "meta.json", meta)
    for name in (*files, *(staged or []), "meta.json"):
        with (tmp / name).open("rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    point(root, "latest", final.name)
    return final


def point(root: Path, link: str, target: str) -> None:
    """Atomically make ``root/link`` a symlink to ``target`` (a sibling folder name)."""
    tmp = root / f".{link}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, root / link)


def resolve(path: Path) -> Path:
    """A checkpoint folder from itself, a run directory (its latest) or a ``checkpoints`` folder."""
    for candidate in (path, path / "latest", path / CHECKPOINTS / "latest"):
        if (candidate / "meta.json").is_file():
            return candidate.resolve()
    raise CheckpointError(f"{path} is not a checkpoint or a run directory with checkpoints; train first (`aigc train`)")


_VERIFIED: dict[Path, tuple[tuple[int, int, int], str]] = {}  # file -> (its size, mtime, inode; the hash it matched)


def _matches(file: Path, expected: str) -> bool:
    """Whether ``file``'s SHA-256 is ``expected``; hashed once per process while the file is unchanged (same size,
    modification time and inode), so the steps of one command that each load a run (aigc run resolves
    ``model.init`` in every stage) read a 7B base's bytes once, not five times."""
    stat = file.stat()
    seen = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if _VERIFIED.get(file) == (seen, expected):
        return True
    if file_hash(file) != expected:
        return False
    _VERIFIED[file] = (seen, expected)
    return True


def load_checkpoint(path: Path, training: bool = False) -> Checkpoint:
    """Load and verify a checkpoint: every file present and matching the hash in ``meta.json``.

    ``training``: verify the files only a resumed run reads too (a sharded run's ``shards/``, 3x the weights'
    size), which loading the model to use it never reads.
    """
    folder = resolve(path)
    try:
        meta = read_json(folder / "meta.json")
    except ValueError:
        raise CheckpointError(f"{folder / 'meta.json'} is not valid JSON; the checkpoint is corrupt, use an earlier one") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{folder} has checkpoint format {meta.get('format')}; this aigc reads format {FORMAT_VERSION}")
    for name, expected in {**meta.get("files", {}), **(meta.get("training_files", {}) if training else {})}.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; the checkpoint is incomplete, use an earlier one or retrain")
        if not _matches(file, expected):
            raise CheckpointError(f"{file} is corrupt (its SHA-256 differs from meta.json); use an earlier checkpoint")
    config = validate_config(read_json(folder / "config.json"))
    try:  # the header only: the hashes vouch for the bytes, and the weights are read once, by load_model
        with safe_open(folder / weights_file(config), "pt"):
            pass
    except SafetensorError as err:
        raise CheckpointError(f"{folder / weights_file(config)} cannot be read ({err})") from None
    return Checkpoint(folder, config, meta)


def as_checkpoint(source: Checkpoint | Path) -> Checkpoint:
    """``source`` loaded (and verified) unless the caller loaded it already: a command loads its run once and hands
    the :class:`Checkpoint` down, where each step used to hash and read every file again."""
    return source if isinstance(source, Checkpoint) else load_checkpoint(source)


def checkpoints(run_dir: Path) -> list[Path]:
    """The step folders of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def latest_valid(run_dir: Path, warn=print, training: bool = False) -> Checkpoint | None:
    """The newest checkpoint of a run that verifies (with the files a resumed run reads, when ``training``); corrupt
    newer ones are reported through ``warn`` and skipped."""
    for folder in reversed(checkpoints(run_dir)):
        try:
            return load_checkpoint(folder, training)
        except CheckpointError as err:
            warn(f"skipping {folder.name}: {err}")
    return None


def prune(run_dir: Path, keep: int) -> None:
    """Delete step folders other than the ``keep`` newest and the one ``best`` points to (and their GGUF exports);
    clear stale temp folders."""
    root = run_dir / CHECKPOINTS
    best = (root / "best").resolve() if (root / "best").is_symlink() else None
    for folder in checkpoints(run_dir)[:-keep]:
        if folder.resolve() != best:
            shutil.rmtree(folder)
            for export in (root / GGUF_CACHE).glob(f"{folder.name}-*"):
                shutil.rmtree(export, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
