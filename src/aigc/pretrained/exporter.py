"""``aigc export``: a text run -> a Hugging Face model folder that ``AutoModelForCausalLM`` and ``AutoTokenizer`` load.

Writes ``config.json``, ``model.safetensors`` (Hugging Face names, the run's dtype), ``tokenizer.json``,
``tokenizer_config.json`` (special tokens and the chat template), ``chat_template.jinja`` and
``generation_config.json``, in a hidden folder renamed into place at the end. Import then export
gives back the same tensors bit for bit: names and layout change, values never do.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from aigc.checkpoint import load_checkpoint
from aigc.config import GenerateConfig
from aigc.errors import CheckpointError
from aigc.files import write_json
from aigc.chat_template import ChatTemplate
from aigc.models import hf
from aigc.tokenizer import EOT


@dataclass
class ExportResult:
    out_dir: Path
    model_type: str

    def summary(self) -> str:
        return (f"exported a {self.model_type} model to {self.out_dir}; load it with "
                f"AutoModelForCausalLM.from_pretrained('{self.out_dir}')")


def generation_config(settings: GenerateConfig, model) -> dict[str, Any]:
    """A ``generation_config.json`` for the run's sampling defaults and special ids."""
    out: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "bos_token_id": model.bos_token_id,
                           "pad_token_id": model.pad_token_id}
    if model.eos_token_ids:
        out["eos_token_id"] = model.eos_token_ids[0] if len(model.eos_token_ids) == 1 else model.eos_token_ids
    if settings.temperature == 0:
        return out | {"do_sample": False}
    return out | {"do_sample": True, "temperature": settings.temperature, "top_k": settings.top_k or 0,
                  "top_p": settings.top_p, "repetition_penalty": settings.repetition_penalty}


def export_run(run: Path, out_dir: Path) -> ExportResult:
    """Export the run (or checkpoint) ``run`` to ``out_dir`` (which must not exist yet)."""
    checkpoint = load_checkpoint(run)
    config = checkpoint.config
    if config.model.kind != "gpt" or config.model.image_size:
        raise CheckpointError(f"{run} is not a text GPT run; only those export to a Hugging Face causal LM")
    mapping = hf.hf_config(config.model)
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; give a new folder to export into")
    model = checkpoint.load_model()
    weights = hf.hf_state_dict(model)
    if config.model.tie_embeddings:
        weights.pop("lm_head.weight")  # transformers ties it from tie_word_embeddings
    dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    chat = ChatTemplate.from_checkpoint(checkpoint.path)
    tokens = chat.tokens if chat.tokens else {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-export-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_json(tmp / "config.json", mapping | {"torch_dtype": dtype, "dtype": dtype})
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        shutil.copyfile(checkpoint.path / "tokenizer.json", tmp / "tokenizer.json")
        write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                    "model_max_length": config.model.block_size, **tokens,
                                                    "chat_template": chat.source})
        (tmp / "chat_template.jinja").write_text(chat.source, encoding="utf-8")
        write_json(tmp / "generation_config.json", generation_config(config.generate, config.model))
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out_dir, mapping["model_type"])
