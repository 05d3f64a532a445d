"""``aigc import MODEL.gguf``: a GGUF file (f32, f16, bf16 or q8_0) -> an aigc run, to fine-tune or serve here.

The file is read with llama.cpp's own ``gguf`` package; quantized matrices are dequantized (to float32,
or to ``--dtype``); :mod:`aigc.models.gguf_names` maps the tensors and hyperparameters back, and
:mod:`aigc.pretrained.gguf_vocab` rebuilds the byte-level BPE tokenizer. The run is laid out as a
Hugging Face import is (:func:`aigc.pretrained.importer.write_run`), so every command accepts it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from aigc.chat_template import ChatTemplate
from aigc.config import apply_override, validate_config
from aigc.errors import CheckpointError, ConfigError
from aigc.files import file_hash
from aigc.models import gguf_names
from aigc.pretrained.gguf_vocab import Vocab, tokenizer_from
from aigc.pretrained.importer import DTYPES, ImportResult, write_run

MAGIC = b"GGUF"
SUPPORTED = ("F32", "F16", "BF16", "Q8_0")


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file (by its first four bytes, whatever its name)."""
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(4) == MAGIC


def _metadata(reader) -> dict[str, Any]:
    """Every key's value; float32 values as the shortest decimal that reads back as the same float32 (1e-05, not
    9.999999747378752e-06), which is what was written."""
    out = {}
    for name, field in reader.fields.items():
        value = field.contents()
        if isinstance(value, float):
            value = float(np.format_float_positional(np.float32(value), unique=True))
        out[name] = value
    return out


def _tensors(reader, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors (those named in ``only``, default all) in float32, PyTorch shapes (GGUF stores them
    reversed)."""
    import gguf

    out = {}
    for tensor in reader.tensors:
        if only is not None and tensor.name not in only:
            continue
        kind = tensor.tensor_type.name
        if kind not in SUPPORTED:
            raise CheckpointError(f"tensor {tensor.name} is {kind}; aigc imports {', '.join(SUPPORTED)} GGUF files "
                                  "(re-quantize with llama-quantize --allow-requantize MODEL.gguf OUT.gguf Q8_0)")
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = [int(n) for n in reversed(tensor.shape)]
        out[tensor.name] = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a copy: the file is mapped read-only
    return out


def _ids(meta: dict[str, Any], *keys: str) -> list[int]:
    return [int(meta[f"tokenizer.ggml.{k}_token_id"]) for k in keys if f"tokenizer.ggml.{k}_token_id" in meta]


def _generate_section(meta: dict[str, Any]) -> dict[str, Any]:
    """Our ``generate`` settings from ``general.sampling.*`` (what llama.cpp takes as its defaults)."""
    keys = {"temp": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
            "penalty_repeat": "repetition_penalty"}
    out = {ours: meta[f"general.sampling.{theirs}"] for theirs, ours in keys.items() if f"general.sampling.{theirs}" in meta}
    if "top_k" in out:
        out["top_k"] = int(out["top_k"]) or None
    return out


def import_gguf(path: Path, overrides: list[str] | tuple[str, ...] = (), dtype: str | None = None) -> ImportResult:
    """Import the GGUF file ``path`` as a run (``run.dir``, default ``runs/<file name without .gguf>``)."""
    import gguf

    start = time.monotonic()
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: use one of {', '.join(DTYPES)} (default: float32)")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable GGUF file ({err})") from None
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise CheckpointError(f"the GGUF tokenizer is '{meta.get('tokenizer.ggml.model')}'; aigc imports byte-level BPE "
                              "vocabularies (tokenizer.ggml.model = gpt2) only")
    vocab = Vocab(list(meta["tokenizer.ggml.tokens"]), [int(t) for t in meta["tokenizer.ggml.token_type"]],
                  list(meta.get("tokenizer.ggml.merges", [])), str(meta.get("tokenizer.ggml.pre", "default")))
    tokenizer = tokenizer_from(vocab)
    names = {tensor.name for tensor in reader.tensors}  # the weights are dequantized once the run is checked
    prefix = f"{arch}."
    hparams = {k.removeprefix(prefix): v for k, v in meta.items() if k.startswith(prefix)}
    has_bias = {"qkv": "blk.0.attn_q.bias" in names or "blk.0.attn_qkv.bias" in names,
                "other": "blk.0.attn_output.bias" in names}
    rope_freqs = _tensors(reader, {"rope_freqs.weight"}).get("rope_freqs.weight")
    fields = gguf_names.model_fields(arch, hparams, rope_freqs, len(vocab.tokens), "output.weight" in names, has_bias)
    eos = _ids(meta, "eos", "eot", "eom")
    bos, pad = _ids(meta, "bos"), _ids(meta, "padding")
    fields |= {"eos_token_ids": list(dict.fromkeys(eos)), "bos_token_id": bos[0] if bos else None,
               "pad_token_id": pad[0] if pad else None}
    name = path.name.removesuffix(".gguf")
    raw: dict[str, Any] = {"recipe": name, "data": {"kind": "text"}, "model": fields, "generate": _generate_section(meta),
                           "run": {"dir": str(Path("runs") / name)}}
    for assignment in overrides:
        apply_override(raw, assignment)
    config = validate_config(raw)
    if not config.model.eos_token_ids:
        raise ConfigError("the GGUF file names no end-of-sequence token (tokenizer.ggml.eos_token_id); "
                          "set model.eos_token_ids=[ID]")
    target = DTYPES.get(dtype, torch.float32)
    chat = None  # no template, or aigc's own (which comes with its stop strings): the run gets aigc's default
    if meta.get("tokenizer.chat_template", ChatTemplate().source) != ChatTemplate().source:
        specials = {"bos_token": bos, "eos_token": eos[:1]}
        chat = ChatTemplate(str(meta["tokenizer.chat_template"]),
                            {k: vocab.tokens[v[0]] for k, v in specials.items() if v}, ())

    def write_weights(out: Path) -> tuple[int, str]:
        state = gguf_names.from_gguf(_tensors(reader), config.model)
        save_file({k: v.to(target).contiguous() for k, v in state.items()}, str(out), metadata={"format": "pt"})
        return sum(v.numel() for v in state.values()), str(target).removeprefix("torch.")

    origin = {"path": str(path.resolve()), "model_type": f"gguf:{arch}", "files": {path.name: file_hash(path)}}
    parameters, dtype_name = write_run(config, write_weights, tokenizer.to_str(), chat, origin)
    return ImportResult(config.run_dir, f"{arch} (GGUF)", parameters, dtype_name, time.monotonic() - start)
