"""Safetensors streamed: read a model folder's weights shard by shard (memory-mapped), write one file tensor by tensor.

Neither side holds the whole model: :class:`SourceWeights` opens each file with ``safe_open`` (a memory
map) and lets it go once no remaining tensor needs it; :func:`write_streaming` writes the header from
the shapes alone, then each tensor's bytes as it is produced.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from aigc.errors import CheckpointError
from aigc.files import read_json

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


class SourceWeights:
    """The tensors of a Hugging Face model folder: ``model.safetensors``, or the shards its index lists."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / INDEX
        if index.is_file():
            try:
                mapping = read_json(index)["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map)") from None
            self.files = sorted(set(mapping.values()))
        elif (folder / SINGLE).is_file():
            mapping, self.files = None, [SINGLE]
        else:
            other = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
            hint = (f" ({', '.join(other)} are pickled PyTorch files: load and save_pretrained them with "
                    "safe_serialization=True first)") if other else ""
            raise CheckpointError(f"{folder} has no {SINGLE} or {INDEX}; aigc imports safetensors weights{hint}")
        for name in self.files:
            if not (folder / name).is_file():
                raise CheckpointError(f"shard {name} listed in {INDEX} is missing from {folder}; download it again")
        self.where: dict[str, str] = {}
        self.meta: dict[str, tuple[str, list[int]]] = {}
        for name in self.files:
            header = read_header(folder / name)
            for tensor, info in header.items():
                self.where[tensor] = name
                self.meta[tensor] = (info["dtype"], info["shape"])
        if mapping is not None:
            wrong = sorted(t for t, f in mapping.items() if self.where.get(t) != f)
            if wrong:
                raise CheckpointError(f"{INDEX} disagrees with its shards about {len(wrong)} tensor(s), e.g. "
                                      f"{wrong[0]} (listed in {mapping[wrong[0]]}, found in "
                                      f"{self.where.get(wrong[0], 'no shard')}); the shards do not belong together")
        self._open: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self.where)

    def shape(self, name: str) -> list[int]:
        return self.meta[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.meta[name][0]]

    def tensor(self, name: str) -> torch.Tensor:
        file = self.where[name]
        if file not in self._open:
            try:
                self._open[file] = safe_open(str(self.folder / file), framework="pt")
            except Exception as err:  # safetensors raises its own error types for damaged files
                raise CheckpointError(f"{self.folder / file} cannot be read ({err}); it is corrupt, download it again") from None
        return self._open[file].get_tensor(name)

    def release(self, files: Iterable[str]) -> None:
        """Unmap ``files``: nothing left needs them."""
        for file in files:
            self._open.pop(file, None)


def read_header(path: Path) -> dict[str, dict]:
    """The tensors a safetensors file declares; a :class:`CheckpointError` when the file is cut short or damaged."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError("the header is longer than the file")
            header = json.loads(handle.read(length))
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a valid safetensors file ({err}); download it again") from None
    header.pop("__metadata__", None)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + length + end != size:
        raise CheckpointError(f"{path} is truncated or damaged: its header describes {8 + length + end:,} bytes, "
                              f"the file has {size:,}; download it again")
    for name, info in header.items():
        if info.get("dtype") not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {info.get('dtype')}, which aigc does not read")
    return header


def write_streaming(path: Path, plan: list[tuple[str, torch.dtype, list[int]]],
                    produce: Callable[[int], torch.Tensor]) -> None:
    """Write a safetensors file of ``plan`` (name, dtype, shape), tensor ``i`` coming from ``produce(i)``.

    The header is written first from the shapes alone; each tensor is converted to bytes and written
    as it comes, so memory holds one tensor at a time.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in plan:
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for i, (name, dtype, shape) in enumerate(plan):
            tensor = produce(i)
            if tensor.dtype != dtype or list(tensor.shape) != list(shape):
                raise CheckpointError(f"{name}: made {tuple(tensor.shape)} {tensor.dtype}, planned {tuple(shape)} {dtype}")
            out.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
