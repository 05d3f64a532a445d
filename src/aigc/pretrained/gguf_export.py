"""``aigc export RUN OUT --format gguf``: a text GPT run -> one GGUF file for llama.cpp, and a Modelfile for Ollama.

::

    OUT/
        <run>-<type>.gguf   weights (f32, f16, bf16 or q8_0), the model's shape, its tokenizer, chat template,
                            special ids and sampling defaults, written with llama.cpp's own ``gguf`` package
        Modelfile           ``ollama create NAME -f OUT/Modelfile``: FROM, stop tokens, sampling, TEMPLATE

The file says everything llama.cpp needs to run the model as aigc does: matrices in the chosen type
(norms, biases and RoPE factors stay f32, as llama.cpp's converter keeps them; a q8_0 matrix whose rows
are not whole 32-value blocks falls back to f16), ``tokenizer.ggml.add_bos_token`` false because aigc
never adds one to a prompt, and every id that ends a sequence (``eos``, then ``eot``, ``eom``). A LoRA
run is merged into its base first. Written in a hidden folder and renamed into place.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigc.chat_template import ChatTemplate
from aigc.checkpoint import load_checkpoint
from aigc.errors import CheckpointError, ConfigError
from aigc.models import gguf_names
from aigc.pretrained import ollama
from aigc.pretrained.exporter import require_text_gpt
from aigc.pretrained.gguf_vocab import vocab_of
from aigc.tokenizer import EOT, load_tokenizer

TYPES = ("f32", "f16", "bf16", "q8_0")
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # llama.cpp's general.file_type (LlamaFileType)
Q8_BLOCK = 32  # values per q8_0 block: a matrix's rows must be whole blocks


@dataclass
class GgufExport:
    out_dir: Path
    gguf_file: Path
    architecture: str
    type: str
    template: str | None  # the Ollama chat-template family written into the Modelfile, None when written by hand

    def summary(self) -> str:
        how = (f"with a TEMPLATE ({self.template} chat format)" if self.template else
               "without a TEMPLATE (write one by hand: see the comment in it)")
        return (f"exported a {self.architecture} model ({self.type}) to {self.gguf_file} and a Modelfile {how}; run it "
                f"with `llama-cli -m {self.gguf_file}` or `ollama create NAME -f {self.out_dir / 'Modelfile'}`")


def _matrix_type(gguf, array: np.ndarray, kind: str):
    """The GGML type a 2-D weight is stored in: ``kind``, except q8_0 over rows that are not whole blocks."""
    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    if kind == "q8_0" and array.shape[-1] % Q8_BLOCK:
        return types["f16"]
    return types[kind]


def export_gguf(run: Path, out_dir: Path, kind: str | None = None) -> GgufExport:
    """Export the run (or checkpoint) ``run`` into the new folder ``out_dir`` as a GGUF file of type ``kind``
    (default: bf16 for a bf16 model, else f16, as llama.cpp's converter picks) and an Ollama Modelfile."""
    import gguf

    checkpoint = load_checkpoint(run)
    config = checkpoint.config
    require_text_gpt(config, run, "GGUF for llama.cpp")
    if kind is not None and kind not in TYPES:
        raise ConfigError(f"--type {kind}: use one of {', '.join(TYPES)}")
    if out_dir.exists():
        raise CheckpointError(f"{out_dir} already exists; give a new folder to export into")
    arch = gguf_names.architecture(config.model)
    tokenizer = load_tokenizer(checkpoint.path / "tokenizer.json")
    vocab = vocab_of(tokenizer, config.model.vocab_size)
    eos_ids = list(config.model.eos_token_ids) or [tokenizer.token_to_id(EOT)]
    chat = ChatTemplate.from_checkpoint(checkpoint.path)
    model = checkpoint.load_merged()  # a LoRA run: its adapters merged into the base (in float32)
    stored = next(model.parameters()).dtype
    kind = kind or ("bf16" if stored == torch.bfloat16 else "f16")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    del model

    name = config.run_dir.name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-export-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    gguf_file = f"{name}-{kind}.gguf"
    try:
        writer = gguf.GGUFWriter(tmp / gguf_file, arch)
        writer.add_name(name)
        writer.add_file_type(_FILE_TYPES[kind])
        if kind == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in gguf_names.hyperparameters(config.model).items():
            _add(writer, f"{arch}.{key}", value)
        _add_tokenizer(writer, vocab, eos_ids, config.model.bos_token_id, config.model.pad_token_id)
        writer.add_chat_template(chat.source)
        _add_sampling(writer, config.generate)
        for tensor_name, tensor in gguf_names.to_gguf(state, config.model):
            array = tensor.numpy()
            if array.ndim < 2:
                writer.add_tensor(tensor_name, array)
                continue
            qtype = _matrix_type(gguf, array, kind)
            data = array if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(array, qtype)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        family = ollama.write_modelfile(tmp / "Modelfile", gguf_file, chat, vocab.tokens, eos_ids, config)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return GgufExport(out_dir, out_dir / gguf_file, arch, kind, family)


def _add(writer, key: str, value) -> None:
    """One metadata value, typed as llama.cpp reads it (counts uint32, floats float32)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, value)


def _add_tokenizer(writer, vocab, eos_ids: list[int], bos: int | None, pad: int | None) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(eos_ids[0])
    if len(eos_ids) > 1:
        writer.add_eot_token_id(eos_ids[1])
    if len(eos_ids) > 2:
        writer.add_eom_token_id(eos_ids[2])
    if bos is not None:
        writer.add_bos_token_id(bos)
    if pad is not None:
        writer.add_pad_token_id(pad)
    writer.add_add_bos_token(False)  # aigc encodes prompts as they are: llama.cpp must too
    writer.add_add_eos_token(False)


def _add_sampling(writer, settings) -> None:
    """The run's sampling defaults as ``general.sampling.*`` (llama.cpp takes them as its defaults)."""
    writer.add_sampling_temp(float(settings.temperature))
    writer.add_sampling_top_k(int(settings.top_k or 0))
    writer.add_sampling_top_p(float(settings.top_p))
    writer.add_sampling_min_p(float(settings.min_p))
    writer.add_sampling_penalty_repeat(float(settings.repetition_penalty))
