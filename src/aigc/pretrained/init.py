"""``model.init``: fine-tuning starts from an existing model, and takes its shape, tokenizer and chat template.

The init may be an aigc run (its latest checkpoint), a checkpoint folder, or a Hugging Face model folder.
Either way it becomes ``<run>/base``: a Hugging Face folder is imported there once
(:func:`~aigc.pretrained.importer.import_model`), an aigc checkpoint is hard-linked there, so the run
keeps the weights it started from whatever happens to the run they came from. The run's config then
gets the init's ``model`` section (the recipe's model settings do not apply: the weights fix them), with
``model.init`` pinned to that checkpoint in ``<run>/base``, and ``tokenizer.path`` pointing at the
init's tokenizer: ``aigc prepare`` encodes the data with it rather than training a new one. The init's
chat template is copied into the run, so its checkpoints carry it on.

Every process of a torchrun job resolves the same init; the import, the links and the template copy
are each written under a name of their own and renamed into place, and the one that comes second uses
what the first made.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from aigc.chat_template import CHAT_FILE
from aigc.checkpoint import CHECKPOINTS, load_checkpoint, point
from aigc.config import Config
from aigc.errors import CheckpointError, ConfigError
from aigc.files import file_hash, read_json, write_json
from aigc.models import build_model
from aigc.models.lora import apply_lora
from aigc.pretrained.importer import import_model

BASE_DIR = "base"  # <run>/base: the init, imported (Hugging Face) or linked (an aigc checkpoint)
SOURCE = "source.json"  # in <run>/base: the checkpoint it links


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and not (folder / "meta.json").is_file() and not (folder / CHECKPOINTS).is_dir()


def _base_source(base: Path) -> str | None:
    """Where ``<run>/base`` came from: the Hugging Face folder it was imported from, or the checkpoint it links."""
    meta = next(base.glob(f"{CHECKPOINTS}/step_*/meta.json"), None)
    if (base / SOURCE).is_file():
        return read_json(base / SOURCE).get("path")
    return read_json(meta).get("imported_from", {}).get("path") if meta is not None else None


def _check_base(base: Path, source: str) -> bool:
    """Whether ``<run>/base`` already holds ``source`` (False: there is none yet); a clear error if it holds another."""
    if not base.exists():
        return False
    held = _base_source(base)
    if held != source:
        raise ConfigError(f"{base} holds another base model ({held or 'an unfinished one'}), not {source}; "
                          "remove it or use another run.dir")
    return True


def _imported_base(folder: Path, run_dir: Path, log: Callable[[str], None]) -> Path:
    """``<run>/base``, imported from the Hugging Face folder ``folder`` the first time; reused after."""
    base, source = run_dir / BASE_DIR, str(folder.resolve())
    if not _check_base(base, source):
        log(f"importing {folder} into {base}")
        try:
            import_model(folder, [f"run.dir={base}"])
        except (CheckpointError, OSError):
            if not _check_base(base, source):  # not another process importing the same folder at once
                raise
    return base


def _local_base(checkpoint: Path, run_dir: Path, log: Callable[[str], None]) -> Path:
    """The init checkpoint inside ``<run>/base``, as hard links (a copy across file systems): pruning, training on
    or deleting the run it came from can then not take the base of a fine-tune away. Checkpoint files are never
    changed in place, so the links stay the same bytes."""
    base = run_dir / BASE_DIR
    if checkpoint.is_relative_to(base.resolve()):
        return checkpoint
    target = base / CHECKPOINTS / checkpoint.name
    if _check_base(base, str(checkpoint)):
        return target
    tmp = run_dir / f".tmp-base-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / CHECKPOINTS / checkpoint.name).mkdir(parents=True)
    for file in checkpoint.iterdir():
        if file.is_file():
            _link_or_copy(file, tmp / CHECKPOINTS / checkpoint.name / file.name)
    _link_or_copy(checkpoint / "tokenizer.json", tmp / "tokenizer.json")
    write_json(tmp / SOURCE, {"path": str(checkpoint)})
    point(tmp / CHECKPOINTS, "latest", checkpoint.name)
    try:
        os.replace(tmp, base)
        log(f"linked {checkpoint} into {base}")
    except OSError:  # another process of this run made it first
        shutil.rmtree(tmp, ignore_errors=True)
        _check_base(base, str(checkpoint))
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def resolve_init(config: Config, log: Callable[[str], None] = _to_stderr) -> Config:
    """``config`` with ``model.init``'s model settings and tokenizer (unchanged when there is no init)."""
    init = config.model.init
    if init is None:
        return config
    folder = Path(init).expanduser()
    if not folder.exists():
        raise ConfigError(f"model.init={init}: no such run, checkpoint or Hugging Face model folder (train one first, "
                          "e.g. `aigc run code`, or name a Hugging Face model folder)")
    if _is_hf_folder(folder):
        folder = _imported_base(folder, config.run_dir, log)
    try:
        checkpoint = load_checkpoint(folder)
    except CheckpointError as err:
        raise ConfigError(f"model.init={init}: {err}") from None
    checkpoint = load_checkpoint(_local_base(checkpoint.path, config.run_dir, log))
    model = checkpoint.config.model
    if not model.is_text_gpt:
        raise ConfigError(f"model.init={init} is not a text GPT run; fine-tuning starts from one (an aigc text or "
                          "code run, or an imported Hugging Face causal LM)")
    tokenizer = checkpoint.path / "tokenizer.json"
    own = config.tokenizer.path
    if own is not None and own.resolve() != tokenizer.resolve() and (not own.is_file() or file_hash(own) != file_hash(tokenizer)):
        raise ConfigError(f"tokenizer.path={own} is not the tokenizer of model.init={init}; a fine-tuned model keeps "
                          "its base's tokenizer, so leave tokenizer.path unset")
    resolved = config.model_copy(update={
        "model": model.model_copy(update={"init": checkpoint.path}),
        "tokenizer": config.tokenizer.model_copy(update={"path": tokenizer}),
    })
    if resolved.train.seq_len and resolved.train.seq_len > model.block_size:
        raise ConfigError(f"train.seq_len ({resolved.train.seq_len}) is longer than model.init's context "
                          f"({model.block_size} tokens)")
    if resolved.train.lora.enabled:  # unknown targets and impossible ranks fail now, before any data work
        with torch.device("meta"):
            apply_lora(build_model(model), resolved.train.lora)
    _copy_chat_template(checkpoint.path, config.run_dir)
    return resolved


def _copy_chat_template(checkpoint: Path, run_dir: Path) -> None:
    """The init's chat template becomes the run's (and none when the init has none)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CHAT_FILE
    if not (checkpoint / CHAT_FILE).is_file():
        target.unlink(missing_ok=True)
        return
    tmp = run_dir / f".{CHAT_FILE}.tmp-{os.getpid()}"
    shutil.copyfile(checkpoint / CHAT_FILE, tmp)
    tmp.replace(target)
