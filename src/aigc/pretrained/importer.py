"""``aigc import``: a Hugging Face model folder -> an aigc run directory every command accepts.

::

    runs/<name>/
        tokenizer.json
        checkpoints/step_000000/
            config.json         the run: data.kind=text, the mapped model section (eos/bos/pad ids included),
                                the generate section from generation_config.json
            model.safetensors   our parameter names (fused q/k/v and gate/up), the stored dtype unless --dtype
            tokenizer.json      the model's own, through ``tokenizers``
            chat.json           its chat template and the special-token strings the template reads
            meta.json           file hashes, and where the weights came from with the SHA-256 of each source file
        checkpoints/latest -> step_000000

The run is built in a hidden sibling folder and renamed into place at the end, so a bad input (a
missing shard, a truncated file, an unsupported model_type) leaves nothing behind under the run's name.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aigc import __version__
from aigc.chat_template import CHAT_FILE, ChatTemplate
from aigc.checkpoint import CHECKPOINTS, FORMAT_VERSION, point, step_name
from aigc.config import Config, apply_override, validate_config
from aigc.errors import CheckpointError, ConfigError
from aigc.files import file_hash, read_json, write_json
from aigc.models import hf
from aigc.pretrained.weights import SourceWeights, write_streaming
from aigc.tokenizer import load_tokenizer

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers old checkpoints saved


@dataclass
class ImportResult:
    run_dir: Path
    model_type: str
    parameters: int
    dtype: str
    seconds: float

    def summary(self) -> str:
        return (f"imported a {self.model_type} model ({self.parameters / 1e6:.1f}M parameters, {self.dtype}) into "
                f"{self.run_dir} in {self.seconds:.1f} s; try `aigc generate {self.run_dir} --prompt ...` or "
                f"`aigc serve {self.run_dir}`")


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {path.name}; it is not a Hugging Face model folder ({what})") from None
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object")
    return data


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string, or an AddedToken mapping with its content."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The model's chat template: ``chat_template.jinja``, ``chat_template.json`` or ``tokenizer_config.json``
    (a string, or named templates of which "default" is used)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = None
    if (folder / "chat_template.json").is_file():
        template = _read(folder / "chat_template.json", "chat template").get("chat_template")
    template = template if template is not None else tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template


def special_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """bos/eos/unk/pad token strings of a ``tokenizer_config.json`` (the variables a chat template reads)."""
    tokens = {name: _token_text(tokenizer_config.get(name)) for name in SPECIAL}
    return {k: v for k, v in tokens.items() if v is not None}


def chat_for(folder: Path) -> ChatTemplate | None:
    """The chat template of a Hugging Face model folder with its special tokens; None when it has none."""
    tok_config = _read(folder / "tokenizer_config.json", "") if (folder / "tokenizer_config.json").is_file() else {}
    template = chat_template(folder, tok_config)
    return None if template is None else ChatTemplate(template, special_tokens(tok_config), ())


def _generate_section(generation: dict[str, Any]) -> dict[str, Any]:
    """Our ``generate`` settings from a ``generation_config.json`` (greedy unless it says do_sample)."""
    out: dict[str, Any] = {}
    if generation.get("max_new_tokens"):
        out["max_new_tokens"] = generation["max_new_tokens"]
    if not generation.get("do_sample", False):
        return out | {"temperature": 0.0}
    top_k = generation.get("top_k", 50)
    out |= {"temperature": generation.get("temperature", 1.0), "top_k": top_k or None,
            "top_p": generation.get("top_p", 1.0)}
    if generation.get("min_p"):
        out["min_p"] = generation["min_p"]
    if generation.get("repetition_penalty"):
        out["repetition_penalty"] = generation["repetition_penalty"]
    return out


def _token_ids(tokenizer, names: dict[str, str | None]) -> dict[str, int | None]:
    return {k: (tokenizer.token_to_id(v) if v else None) for k, v in names.items()}


def read_run_config(folder: Path, overrides: list[str], tokenizer) -> tuple[Config, str]:
    """The run's :class:`Config` for the model folder (``overrides`` applied) and its model_type."""
    hf_config = _read(folder / "config.json", "config.json")
    mapped = hf.model_config(hf_config)
    generation = _read(folder / "generation_config.json", "") if (folder / "generation_config.json").is_file() else {}
    tok_config = _read(folder / "tokenizer_config.json", "") if (folder / "tokenizer_config.json").is_file() else {}
    tokens = special_tokens(tok_config)
    by_text = _token_ids(tokenizer, {name: tokens.get(name) for name in SPECIAL})
    eos = _ids(generation.get("eos_token_id")) or _ids(hf_config.get("eos_token_id")) or _ids(by_text["eos_token"])
    bos = _ids(generation.get("bos_token_id")) or _ids(hf_config.get("bos_token_id")) or _ids(by_text["bos_token"])
    pad = _ids(generation.get("pad_token_id")) or _ids(hf_config.get("pad_token_id")) or _ids(by_text["pad_token"])
    mapped |= {"eos_token_ids": eos, "bos_token_id": bos[0] if bos else None, "pad_token_id": pad[0] if pad else None}
    raw: dict[str, Any] = {"recipe": folder.resolve().name, "data": {"kind": "text"}, "model": mapped,
                           "generate": _generate_section(generation)}
    for assignment in overrides:
        apply_override(raw, assignment)
    if raw.get("run", {}).get("dir") is None:
        raw.setdefault("run", {})["dir"] = str(Path("runs") / folder.resolve().name)
    config = validate_config(raw)
    if config.model.block_size > int(hf_config.get("max_position_embeddings") or hf_config.get("n_positions")):
        raise ConfigError(f"model.block_size={config.model.block_size} is longer than the model was built for")
    if not config.model.eos_token_ids:
        raise ConfigError("the model names no end-of-sequence token (no eos_token_id in generation_config.json or "
                          "config.json, no eos_token in tokenizer_config.json); set model.eos_token_ids=[ID]")
    return config, hf_config["model_type"]


def _plan(config: Config, source: SourceWeights, dtype: torch.dtype | None):
    """(our name, dtype, shape) for every parameter, checked against the model's shapes, and the table entries."""
    with torch.device("meta"):
        from aigc.models import build_model

        expected = dict(build_model(config.model).state_dict())
    table = hf.weight_map(config.model)
    have = source.names()
    missing = [name for w in table for name in w.theirs if name not in have]
    if missing:
        raise CheckpointError(f"the weights lack {len(missing)} tensor(s) a {hf.family(config.model)} model with this "
                              f"config.json needs, e.g. {missing[0]}; the files do not match config.json")
    used = {name for w in table for name in w.theirs}
    extra = sorted(n for n in have - used if not n.endswith(IGNORED_SUFFIXES) and n != "lm_head.weight")
    if extra:
        raise CheckpointError(f"the weights hold {len(extra)} tensor(s) aigc would not use, e.g. {extra[0]}; "
                              "this is not a plain model of its model_type")
    plan = []
    for weight in table:
        shapes = [source.shape(name) for name in weight.theirs]
        if weight.transpose:
            shapes = [list(reversed(s)) for s in shapes]
        shape = [sum(s[0] for s in shapes), *shapes[0][1:]]
        want = list(expected[weight.ours].shape)
        if shape != want:
            raise CheckpointError(f"{weight.theirs[0]} has shape {shapes[0]}; config.json implies {want} for "
                                  f"{weight.ours}: the weights do not match config.json")
        plan.append((weight.ours, dtype or source.dtype(weight.theirs[0]), shape))
    return table, plan


def _write_weights(path: Path, config: Config, source: SourceWeights, dtype: torch.dtype | None) -> tuple[int, str]:
    """Stream the converted weights into ``path``; (parameter count, dtype name)."""
    table, plan = _plan(config, source, dtype)
    order = sorted(range(len(table)), key=lambda i: min(source.files.index(source.where[n]) for n in table[i].theirs))
    table, plan = [table[i] for i in order], [plan[i] for i in order]
    needs = Counter(source.where[n] for w in table for n in w.theirs)

    def produce(i: int) -> torch.Tensor:
        weight = table[i]
        tensor = hf.assemble(weight, [source.tensor(n) for n in weight.theirs]).to(plan[i][1])
        for name in weight.theirs:
            needs[source.where[name]] -= 1
        source.release([f for f, n in needs.items() if n == 0])
        return tensor

    write_streaming(path, plan, produce)
    count = sum(torch.Size(shape).numel() for _, _, shape in plan)
    dtypes = sorted({str(d).removeprefix("torch.") for _, d, _ in plan})
    return count, "/".join(dtypes)


def write_run(config: Config, write_weights: Callable[[Path], tuple[int, str]], tokenizer_json: str,
              chat: ChatTemplate | None, origin: dict[str, Any]) -> tuple[int, str]:
    """Write an imported model as the run ``config.run_dir`` (see the module docstring); the weights come from
    ``write_weights(path)``, which returns (parameter count, dtype name), and that pair is returned.

    ``origin`` (where the weights came from, with file hashes) goes into ``meta.json`` as ``imported_from``.
    """
    run_dir = config.run_dir
    if run_dir.exists():
        raise CheckpointError(f"{run_dir} already exists; choose another run.dir=... or remove it first")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f".tmp-import-{run_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        checkpoint = tmp / CHECKPOINTS / step_name(0)
        checkpoint.mkdir(parents=True)
        parameters, dtype_name = write_weights(checkpoint / "model.safetensors")
        write_json(checkpoint / "config.json", config.model_dump(mode="json"))
        for folder in (checkpoint, tmp):
            (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        files = ["config.json", "model.safetensors", "tokenizer.json"]
        if chat is not None:
            write_json(checkpoint / CHAT_FILE, chat.to_json())
            files.append(CHAT_FILE)
        meta = {
            "format": FORMAT_VERSION, "aigc_version": __version__, "torch_version": torch.__version__, "step": 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "imported_from": origin,
            "files": {name: file_hash(checkpoint / name) for name in files},
        }
        write_json(checkpoint / "meta.json", meta)
        point(tmp / CHECKPOINTS, "latest", checkpoint.name)
        os.replace(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return parameters, dtype_name


def import_model(folder: Path, overrides: list[str] | tuple[str, ...] = (), dtype: str | None = None) -> ImportResult:
    """Import the Hugging Face model folder ``folder`` as a run (``run.dir``, default ``runs/<folder name>``)."""
    start = time.monotonic()
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder or a GGUF file; give a Hugging Face model folder (config.json, "
                              "model.safetensors, tokenizer.json), e.g. one under ~/.cache/huggingface/hub/models--ORG--NAME/snapshots/, "
                              "or a .gguf file")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: use one of {', '.join(DTYPES)} (default: keep the stored dtype)")
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"{folder} has no tokenizer.json; aigc reads the fast-tokenizer format (save the "
                              "tokenizer with transformers' AutoTokenizer ... save_pretrained to get one)")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    config, model_type = read_run_config(folder, list(overrides), tokenizer)
    if tokenizer.get_vocab_size(with_added_tokens=True) > config.model.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens, more than "
                              f"the model's vocab_size {config.model.vocab_size}")
    source = SourceWeights(folder)

    def write_weights(path: Path) -> tuple[int, str]:
        written = _write_weights(path, config, source, DTYPES.get(dtype))
        source.release(source.files)
        return written

    origin = {"path": str(folder.resolve()), "model_type": model_type,
              "files": {name: file_hash(folder / name) for name in source.files}}
    tokenizer_text = (folder / "tokenizer.json").read_text(encoding="utf-8")  # the model's own file, unchanged
    parameters, dtype_name = write_run(config, write_weights, tokenizer_text, chat_for(folder), origin)
    return ImportResult(config.run_dir, model_type, parameters, dtype_name, time.monotonic() - start)
