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

from aigc.chat_template import ChatTemplate
from aigc.checkpoint import load_checkpoint
from aigc.config import Config, GenerateConfig
from aigc.errors import CheckpointError
from aigc.files import read_json, write_json
from aigc.models import hf
from aigc.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from aigc.tokenizer import EOT, load_tokenizer

ADAPTER_DIR = "adapter"  # a LoRA run's adapters, exported beside their base


@dataclass
class ExportResult:
    out_dir: Path
    model_type: str
    adapters: str | None = None  # a LoRA run's adapters: "beside" the base in adapter/, or "merged" into it

    def summary(self) -> str:
        how = {None: "", "beside": "with its LoRA adapters in adapter/ ", "merged": "with the LoRA adapters merged "}
        text = (f"exported a {self.model_type} model {how[self.adapters]}to {self.out_dir}; "
                f"load it with AutoModelForCausalLM.from_pretrained('{self.out_dir}')")
        if self.adapters == "beside":
            text += f" and peft.PeftModel.from_pretrained(model, '{self.out_dir / ADAPTER_DIR}')"
        return text


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


def require_text_gpt(config: Config, run: Path, target: str) -> None:
    """Refuse a run that is not a decoder-only text GPT (a translation, image or speech run): only those export."""
    if not config.model.is_text_gpt:
        raise CheckpointError(f"{run} is not a text GPT run; only those export to {target}")


def export_run(run: Path, out_dir: Path, merge: bool = False) -> ExportResult:
    """Export the run (or checkpoint) ``run`` to ``out_dir`` (which must not exist yet).

    A LoRA run exports its base model with the adapters in ``out_dir/adapter`` (PEFT's files, for
    ``PeftModel.from_pretrained``), or with ``merge`` one model with the adapters folded into its weights.
    """
    checkpoint = load_checkpoint(run)
    config = checkpoint.config
    require_text_gpt(config, run, "a Hugging Face causal LM")
    if merge and not checkpoint.is_adapter:
        raise CheckpointError(f"{run} holds a whole model, no LoRA adapters to merge; export it without --merge")
    mapping = hf.hf_config(config.model)
    if not config.model.eos_token_ids:  # aigc's own tokenizers end documents with <|endoftext|>
        mapping["eos_token_id"] = load_tokenizer(checkpoint.path / "tokenizer.json").token_to_id(EOT)
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; give a new folder to export into")
    separate = checkpoint.is_adapter and not merge
    model = load_checkpoint(config.model.init).load_model() if separate else checkpoint.load_merged()
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
        if separate:
            (tmp / ADAPTER_DIR).mkdir()
            shutil.copyfile(checkpoint.path / ADAPTER_WEIGHTS, tmp / ADAPTER_DIR / ADAPTER_WEIGHTS)
            adapter = read_json(checkpoint.path / ADAPTER_CONFIG) | {"base_model_name_or_path": str(out_dir.resolve())}
            write_json(tmp / ADAPTER_DIR / ADAPTER_CONFIG, adapter)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out_dir, mapping["model_type"], "beside" if separate else "merged" if merge else None)
