"""llama.cpp as the engine under a text GPT's decode core: ``aigc generate|chat|serve --backend llamacpp``.

On a CPU, llama.cpp's kernels decode 2 to 4 times faster than PyTorch's at batch 1 (see
``docs/pretrained.md``, measured by ``benchmarks/llamacpp.py``). This backend hands it only the
arithmetic: the run is exported once to GGUF (:func:`~aigc.pretrained.gguf_export.export_gguf`, kept
beside the checkpoint) and loaded through llama-cpp-python's C API, which turns token ids into
next-token logits. Everything after the logits stays aigc's own :class:`~aigc.generate.decode.Row`:
sampling with the row's seed, penalties, stop ids and stop strings, log-probabilities and text; the
tokenizer and the chat template are the run's. So a prompt decodes with the same settings and rules on
either backend, and greedy decoding gives the same tokens (tested).

Two batch layouts, as for PyTorch: :class:`LlamaPaddedBatch` (prompts decoded together, for
``aigc generate``) and :class:`LlamaSlotBatch` (rows that join and leave, for the server's continuous
batching). Each sequence is its own llama.cpp sequence id with its own KV stream, so no padding is
computed.

Shapes: B = rows decoded in a call, V = vocabulary.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from aigc import __version__
from aigc.chat_template import ChatTemplate
from aigc.checkpoint import GGUF_CACHE, Checkpoint
from aigc.config import ModelConfig
from aigc.errors import CheckpointError, ConfigError, GenerationError
from aigc.generate.engine import DecoderEngine
from aigc.generate.text import TextGenerator
from aigc.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

# The keys and values one server holds (llama.cpp allocates them at start): each of its slots gets the model's
# context, or its share of this when that is less (a SmolLM2-135M shape: 23 KB a position, 2,900 positions for each
# of 32 slots)
SERVER_KV_BYTES = 2 * 2**30
MIN_SLOT_POSITIONS = 256  # a slot's least room, whatever its share of SERVER_KV_BYTES
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: the sequences one context decodes
GGML_LOG_ERROR = 4  # ggml_log_level: none, debug, info, warn, error, cont
_log_callback = None  # llama.cpp's log callback, kept alive for as long as the process runs


def _library():
    """llama-cpp-python's ctypes bindings, logging into :data:`log` (its errors as errors, the rest as debug), or
    a clear error saying how to install them."""
    global _log_callback
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError("--backend llamacpp needs llama-cpp-python: pip install 'aigc[llamacpp]' (it builds "
                          "llama.cpp from source, a few minutes), or use --backend torch") from None
    if _log_callback is None:
        @llama_cpp.llama_log_callback
        def to_logging(level: int, text: bytes, user_data) -> None:
            log.log(logging.ERROR if level == GGML_LOG_ERROR else logging.DEBUG, "%s",
                    text.decode("utf-8", "replace").rstrip())

        _log_callback = to_logging
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp (weights memory-mapped), with the run's model config for its limits."""

    def __init__(self, gguf_file: Path, config: ModelConfig, threads: int | None = None):
        self.lib = _library()
        self.config, self.gguf_file = config, gguf_file
        self.threads = threads or torch.get_num_threads()
        self.kv_bytes_per_token = config.n_layer * config.kv_heads * config.head_dim * 2 * 2  # keys, values in f16
        self.lib.llama_backend_init()
        self.handle = self.lib.llama_model_load_from_file(str(gguf_file).encode(), self.lib.llama_model_default_params())
        if not self.handle:
            raise GenerationError(f"llama.cpp could not load {gguf_file}; delete it to export it again")
        vocab = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(self.handle))
        if vocab != config.vocab_size:
            raise GenerationError(f"{gguf_file} has {vocab} tokens, the run {config.vocab_size}; delete it to export "
                                  "it again")

    def context(self, sequences: int, positions: int) -> LlamaContext:
        """A new context of ``sequences`` sequences with room for ``positions`` tokens each."""
        return LlamaContext(self, sequences, positions)

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.llama_model_free(self.handle)


class LlamaContext:
    """One llama.cpp context: ``sequences`` KV streams (sequence ids ``0 ..``) of ``positions`` tokens each."""

    def __init__(self, model: LlamaCppModel, sequences: int, positions: int):
        if sequences > MAX_SEQUENCES:
            raise GenerationError(f"llama.cpp decodes at most {MAX_SEQUENCES} sequences at once, not {sequences}: "
                                  f"ask for fewer prompts or choices at once (aigc serve: --max-batch {MAX_SEQUENCES} "
                                  "or less)")
        lib = self.lib = model.lib
        self.model, self.sequences, self.positions = model, sequences, positions
        self.vocab_size = model.config.vocab_size
        params = lib.llama_context_default_params()
        params.n_seq_max, params.n_ctx = sequences, sequences * positions
        params.n_batch = params.n_ctx  # a whole prefill goes in one call; llama.cpp splits it into micro-batches
        params.n_ubatch = min(512, params.n_ctx)
        params.n_outputs_max = sequences  # only each sequence's last token has logits
        params.n_threads = params.n_threads_batch = model.threads
        params.kv_unified = False  # a stream per sequence: attention reads its own keys only, as a slot does
        self.handle = lib.llama_init_from_model(model.handle, params)
        if not self.handle:
            raise GenerationError(f"llama.cpp could not make a context of {sequences} sequences of {positions} "
                                  "positions (out of memory?); ask for fewer prompts at once, or a smaller --max-batch")
        self.memory = lib.llama_get_memory(self.handle)
        self.batch = lib.llama_batch_init(params.n_batch, 0, 1)

    def decode(self, seqs: list[int], tokens: list[list[int]], starts: list[int]) -> torch.Tensor:
        """Append ``tokens[i]`` to sequence ``seqs[i]`` from position ``starts[i]``; the logits after each
        sequence's last new token, float32 (B, V)."""
        batch, n = self.batch, 0
        for seq, ids, start in zip(seqs, tokens, starts):
            for offset, token in enumerate(ids):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, start + offset, 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = offset == len(ids) - 1
                n += 1
        batch.n_tokens = n
        status = self.lib.llama_decode(self.handle, batch)
        if status != 0:
            raise GenerationError(f"llama.cpp could not decode {n} tokens (llama_decode returned {status}; its errors "
                                  "are logged above); retry with fewer prompts at once, or use --backend torch")
        logits = self.lib.llama_get_logits(self.handle)
        return torch.from_numpy(np.ctypeslib.as_array(logits, shape=(len(seqs), self.vocab_size)).copy())

    def clear(self, seq: int = -1) -> None:
        """Forget the tokens of sequence ``seq`` (-1: of every sequence)."""
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def copy(self, source: int, target: int) -> None:
        """Give sequence ``target`` (empty) the tokens of ``source``."""
        self.lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.handle)


class LlamaPaddedBatch:
    """Prompts decoded together, each its own sequence: the llama.cpp form of
    :class:`~aigc.generate.decode.PaddedBatch` (``prefill``, ``decode_step``)."""

    def __init__(self, model: LlamaCppModel, prompts: list[list[int]], steps: int):
        self.context = model.context(len(prompts), max(map(len, prompts)) + steps)
        self.prompts, self.lengths = prompts, [len(p) for p in prompts]
        self.seqs, self.context_size = list(range(len(prompts))), model.config.block_size

    def prefill(self) -> torch.Tensor:
        """Logits after every prompt, (B, V)."""
        return self.context.decode(self.seqs, self.prompts, [0] * len(self.seqs))

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, (B,); logits after it, (B, V).

        A row whose context is full has produced its last token (its logits are unused): it is not fed, and
        its logits are zeros."""
        live = [row for row, length in enumerate(self.lengths) if length < self.context_size]
        tokens = tokens.tolist()
        logits = self.context.decode(live, [[tokens[row]] for row in live], [self.lengths[row] for row in live])
        for row in live:
            self.lengths[row] += 1
        if len(live) == len(tokens):  # the usual step: no row's context is full
            return logits
        every = torch.zeros(len(tokens), self.context.vocab_size)
        every[live] = logits
        return every


class LlamaSlotBatch:
    """The rows of a continuous batch in one llama.cpp context: the llama.cpp form of
    :class:`~aigc.generate.slots.SlotBatch` (``prefill``, ``step``, ``remove``, ``reset``).

    Slot ``i`` decodes into llama.cpp sequence ``i``, and the live rows are always ``0 .. active - 1``: a row
    that leaves is replaced by the last one, whose KV stream is copied over (as ``SlotBatch`` moves its
    keys). llama.cpp computes a step of separate streams in one pass only over consecutive sequence ids, so a
    gap would split every later step into one pass per run of ids.

    Each slot holds the model's context, or its share of :data:`SERVER_KV_BYTES` when that is less
    (``capacity``, what the server then promises a request).
    """

    scores_prompts = False  # its context keeps the logits of each sequence's last token only
    prefix_cache = None  # prompts are prefilled whole

    def __init__(self, model: LlamaCppModel, slots: int):
        self.slots, self.active = slots, 0
        share = SERVER_KV_BYTES // (slots * model.kv_bytes_per_token)
        self.capacity = min(model.config.block_size, max(share, MIN_SLOT_POSITIONS))
        self.context = model.context(slots, self.capacity)
        self.lengths = [0] * slots
        log.info("llama.cpp holds %d sequences of %d positions (%.1f GiB of keys and values)", slots, self.capacity,
                 slots * self.capacity * model.kv_bytes_per_token / 2**30)

    def start(self, prompt: list[int], every_position: bool = False) -> list[int]:
        """The prefill of ``prompt``: llama.cpp decodes a whole prompt in one call (it splits it itself), so
        :meth:`run` has nothing to do and :meth:`place` decodes it. Not ``every_position``: see ``scores_prompts``."""
        if every_position:
            raise GenerationError("prompt log-probabilities (echo with logprobs) need the torch backend")
        return prompt

    def run(self, prefill: list[int], tokens: int) -> tuple[int, bool]:
        return 0, True

    def place(self, prefill: list[int], copies: int) -> tuple[torch.Tensor, list[int]]:
        return self.prefill(prefill, copies)

    def prefill(self, prompt: list[int], copies: int, every_position: bool = False) -> tuple[torch.Tensor, list[int]]:
        """Decode ``prompt`` into the next free slot and copy it into ``copies - 1`` more; the logits after it (V,)
        and the slots. All or nothing: after a failure no slot is kept. Not ``every_position``: see
        ``scores_prompts``."""
        self.start(prompt, every_position)
        if len(prompt) >= self.capacity:
            raise GenerationError(f"the prompt has {len(prompt)} tokens; this server holds {self.capacity} per "
                                  "sequence (a smaller --max-batch gives each sequence more)")
        first = self.active
        try:
            logits = self.context.decode([first], [prompt], [0])[0]
        except BaseException:  # nothing kept: llama.cpp may leave what it decoded before a fatal error
            self.context.clear(first)
            raise
        slots = list(range(first, first + copies))
        for slot in slots:
            if slot != first:
                self.context.copy(first, slot)
            self.lengths[slot] = len(prompt)
        self.active += copies
        return logits, slots

    def step(self, tokens: list[int]) -> torch.Tensor:
        """One token per live row -> the logits after it, (B, V)."""
        live = range(self.active)
        logits = self.context.decode(list(live), [[t] for t in tokens], self.lengths[: self.active])
        for slot in live:
            self.lengths[slot] += 1
        return logits

    def remove(self, slot: int) -> int | None:
        """Free ``slot`` by moving the last live row into it; return the row that moved (None if none did)."""
        last = self.active - 1
        self.context.clear(slot)
        self.active -= 1
        if slot == last:
            return None
        self.context.copy(last, slot)  # llama.cpp copies the stream before its next decode writes to either
        self.context.clear(last)
        self.lengths[slot] = self.lengths[last]
        return last

    def reset(self) -> None:
        """Free every slot."""
        self.context.clear()
        self.active = 0


class LlamaCppEngine(DecoderEngine):
    """The decode engine of a text GPT with llama.cpp computing the logits (on the CPU). It has no uncached path:
    ``use_cache`` (the reference the torch cache is tested against) does not apply."""

    def __init__(self, model: LlamaCppModel):
        self.model = model
        self.block_size, self.vocab_size = model.config.block_size, model.config.vocab_size

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def padded_batch(self, prompts: list[list[int]], steps: int, use_cache: bool = True) -> LlamaPaddedBatch:
        return LlamaPaddedBatch(self.model, prompts, steps)

    def slot_batch(self, slots: int, prefix_cache_bytes: int = 0) -> LlamaSlotBatch:
        """llama.cpp's slots; prompts are prefilled whole (this backend keeps no prefixes between requests)."""
        return LlamaSlotBatch(self.model, slots)


def gguf_type(checkpoint: Checkpoint, quantize: str | None) -> str:
    """The GGUF type that decodes as the run does: q8_0 for ``--quantize int8``, else the stored precision."""
    if quantize == "int8":
        return "q8_0"
    return {"BF16": "bf16", "F16": "f16"}.get(checkpoint.stored_precision(), "f32")  # a LoRA run: merged in f32


def cached_gguf(checkpoint: Checkpoint, kind: str) -> Path:
    """The checkpoint exported to GGUF ``kind``, once: kept in ``checkpoints/.gguf/`` under the hash of the
    checkpoint's files (and of a LoRA run's base) and of aigc's version, so a changed checkpoint or a new aigc
    exports again. A lock lets one process export while another waits for its file."""
    from aigc.pretrained.gguf_export import export_gguf

    identity = json.dumps([__version__, checkpoint.meta.get("files"),
                           checkpoint.base_identity() if checkpoint.is_adapter else None], sort_keys=True)
    root = checkpoint.path.parent / GGUF_CACHE
    folder = root / f"{checkpoint.path.name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}-{kind}"
    try:
        root.mkdir(exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
            if found:
                return found[0]
            shutil.rmtree(folder, ignore_errors=True)
            log.info("exporting %s to GGUF (%s) for llama.cpp, once, into %s", checkpoint.path, kind, folder)
            try:
                return export_gguf(checkpoint.path, folder, kind).gguf_file
            except (CheckpointError, ConfigError) as err:  # the export's advice, and this command's way out
                raise type(err)(f"--backend llamacpp runs the run's GGUF export, which cannot be made: {err}. Or "
                                "decode with --backend torch") from None
    except PermissionError as err:
        raise CheckpointError(f"--backend llamacpp keeps a GGUF export of the checkpoint in {root}, which cannot be "
                              f"written ({err.strerror}): make the run's folder writable, or use --backend torch") from None


def llamacpp_generator(checkpoint: Checkpoint, device: str = "cpu", quantize: str | None = None) -> TextGenerator:
    """A :class:`TextGenerator` of a text GPT run whose logits llama.cpp computes (on the CPU)."""
    from aigc.pretrained.exporter import require_text_gpt

    require_text_gpt(checkpoint.config, checkpoint.path, "llama.cpp (--backend llamacpp)")
    if device != "cpu":
        raise ConfigError(f"--backend llamacpp runs on the CPU; drop --device {device}, or use --backend torch")
    _library()
    model = LlamaCppModel(cached_gguf(checkpoint, gguf_type(checkpoint, quantize)), checkpoint.config.model)
    tokenizer = load_tokenizer(checkpoint.path / "tokenizer.json")
    return TextGenerator(model, tokenizer, checkpoint.config.model.eos_token_ids,
                         ChatTemplate.from_checkpoint(checkpoint.path), engine=LlamaCppEngine(model))
