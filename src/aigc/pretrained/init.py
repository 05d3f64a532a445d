"""``model.init``: fine-tuning starts from an existing model, and takes its shape, tokenizer and chat template.

The init may be an aigc run (its latest checkpoint), a checkpoint folder, or a Hugging Face model folder,
which is imported once into ``<run>/base`` (:func:`~aigc.pretrained.importer.import_model`). The run's
config then gets the init's ``model`` section (the recipe's model settings do not apply: the weights fix
them), with ``model.init`` pinned to that exact checkpoint folder so the run always finds the weights
it started from, and ``tokenizer.path`` pointing at the init's tokenizer: ``aigc prepare`` encodes the
data with it rather than training a new one. The init's chat template is copied into the run, so its
checkpoints carry it on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from aigc.checkpoint import CHECKPOINTS, load_checkpoint
from aigc.chat_template import CHAT_FILE
from aigc.config import Config
from aigc.errors import CheckpointError, ConfigError
from aigc.files import file_hash, read_json
from aigc.models import build_model
from aigc.models.lora import apply_lora
from aigc.pretrained.importer import import_model

BASE_DIR = "base"  # <run>/base: a Hugging Face init, imported


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and not (folder / "meta.json").is_file() and not (folder / CHECKPOINTS).is_dir()


def _imported_base(folder: Path, run_dir: Path, log: Callable[[str], None]) -> Path:
    """``<run>/base``, imported from the Hugging Face folder ``folder`` the first time; reused after."""
    base = run_dir / BASE_DIR
    source = str(folder.resolve())
    if base.is_dir():
        meta = read_json(next(base.glob(f"{CHECKPOINTS}/step_*/meta.json")))
        if meta.get("imported_from", {}).get("path") != source:
            raise ConfigError(f"{base} holds a model imported from {meta.get('imported_from', {}).get('path')}, not "
                              f"{source}; remove {base} or use another run.dir")
        return base
    log(f"importing {folder} into {base}")
    import_model(folder, [f"run.dir={base}"])
    return base


def resolve_init(config: Config, log: Callable[[str], None] = print) -> Config:
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
    model = checkpoint.config.model
    if model.kind != "gpt" or model.image_size:
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
    tmp = run_dir / f".{CHAT_FILE}.tmp"
    shutil.copyfile(checkpoint / CHAT_FILE, tmp)
    tmp.replace(target)
