"""Typed configuration: YAML recipes plus ``key=value`` overrides, validated by pydantic.

A recipe is a YAML file whose top-level sections mirror :class:`Config`. Built-in recipes ship in
``aigc/recipes/``; a user may pass the path of their own. Overrides use dotted keys
(``tokenizer.vocab_size=4096``) and YAML values (``data.paths=[a.txt,b.txt]``). Unknown keys and wrong
types are reported with the key and the list of valid keys, never as a pydantic traceback.
"""

from __future__ import annotations

import difflib
import importlib.resources
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import ErrorDetails

from aigc.errors import CombinationError, ConfigError
from aigc.sections import DataConfig, Section
from aigc.tasks.registry import KINDS, kind_settings


class RunConfig(Section):
    dir: Path | None = Field(None, description="run directory; default runs/<recipe>")


class TokenizerConfig(Section):
    kind: Literal["bpe", "char"] = Field("bpe", description="byte-level BPE or a character vocabulary")
    vocab_size: int = Field(4096, ge=2, le=1 << 20, description="vocabulary size (a maximum for char)")
    path: Path | None = Field(None, description="use this existing tokenizer.json instead of training one")
    train_max_mb: float = Field(64.0, gt=0, description="train the tokenizer on at most this many MB of text")
    separate: bool = Field(False, description="pairs: one tokenizer per side (source, target) instead of a joint one")


class RopeScaling(Section):
    """Llama 3.1's RoPE scaling: low frequencies divided by ``factor``, high ones kept, a smooth blend between."""

    type: Literal["llama3"] = Field("llama3", description="the scaling rule (llama3)")
    factor: float = Field(8.0, gt=0, description="how much longer the context is than the original")
    low_freq_factor: float = Field(1.0, gt=0, description="wavelengths above original / low_freq_factor are scaled")
    high_freq_factor: float = Field(4.0, gt=0, description="wavelengths below original / high_freq_factor are kept")
    original_context: int = Field(8192, ge=1, description="the context the model was first trained with")


class ModelConfig(Section):
    """Shape and options of the model: the decoder-only GPT or the encoder-decoder (``aigc.models``)."""

    kind: Literal["gpt", "seq2seq"] = Field("gpt", description="decoder-only GPT or encoder-decoder Transformer")
    init: Path | None = Field(
        None, description="fine-tune: start from this run, checkpoint or Hugging Face model folder (its weights, "
        "tokenizer, chat template and model.* settings, which replace the recipe's)"
    )
    n_encoder_layer: int | None = Field(None, ge=1, description="encoder blocks of a seq2seq model; default n_layer")
    n_layer: int = Field(4, ge=1, description="Transformer blocks")
    n_head: int = Field(4, ge=1, description="attention (query) heads")
    n_kv_head: int | None = Field(None, ge=1, description="key/value heads for grouped-query attention; default n_head")
    n_embd: int = Field(128, ge=1, description="residual stream width")
    block_size: int = Field(256, ge=1, description="longest context the model accepts (tokens)")
    vocab_size: int | None = Field(None, ge=2, description="set from the tokenizer; override only to pad it")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="normalisation layer")
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] = Field(
        "gelu", description="feed-forward: gelu (exact), gelu_tanh (GPT-2's approximation) or swiglu"
    )
    mlp_hidden: int | None = Field(None, ge=1, description="feed-forward width; default 4*n_embd, ~8/3*n_embd for swiglu")
    position: Literal["learned", "rope"] = Field("learned", description="position information")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base")
    rope_scaling: RopeScaling | None = Field(None, description="RoPE frequency scaling for long contexts (Llama 3.1's llama3)")
    bias: bool = Field(True, description="bias in linear layers and LayerNorm")
    qkv_bias: bool | None = Field(None, description="bias in the query/key/value projection; default model.bias (Qwen2: true)")
    head_size: int | None = Field(None, ge=1, description="size of one attention head; default n_embd / n_head")
    sliding_window: int | None = Field(
        None, ge=1, description="attention window of a Mistral-style model; block_size may not pass it (aigc "
        "computes full attention, which equals windowed attention only within the window)"
    )
    eos_token_ids: list[int] = Field(
        default_factory=list, description="ids that end a sequence: generation stops at any of them; default the "
        "tokenizer's <|endoftext|>"
    )
    bos_token_id: int | None = Field(None, ge=0, description="id of the beginning-of-sequence token, if the model has one")
    pad_token_id: int | None = Field(None, ge=0, description="id of the padding token, if the model has one")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability in training")
    tie_embeddings: bool = Field(True, description="share the token embedding with the output projection")
    share_embeddings: bool = Field(True, description="seq2seq: one embedding table for encoder and decoder")
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of the norm layers")
    image_size: int | None = Field(None, ge=1, description="images: set from the data (row/column positions)")
    image_colors: int | None = Field(None, ge=2, description="images: set from the data (palette size)")
    image_prefix: int | None = Field(None, ge=1, description="images: set from the data (caption tokens before the pixels)")
    audio_codes: int | None = Field(None, ge=2, description="speech: set from the data (entries per codebook)")
    audio_levels: int | None = Field(None, ge=1, description="speech: set from the data (codebooks, tokens per frame)")
    audio_mels: int | None = Field(None, ge=1, description="speech: set from the data (mel bands of a frame)")
    audio_prefix: int | None = Field(None, ge=1, description="speech: set from the data (text tokens before the audio)")
    audio_frames: int | None = Field(None, ge=1, description="speech: set from the data (log-mel frames per clip)")
    audio_voices: list[str] = Field(default_factory=list, description="speech: set from the data (the voices it "
                                    "was trained on)")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.head_size is None and self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.kv_heads})")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError("RoPE needs an even head size (model.head_size, default model.n_embd / model.n_head)")
        if self.sliding_window is not None and self.block_size > self.sliding_window:
            raise ValueError(
                f"model.block_size ({self.block_size}) is longer than model.sliding_window ({self.sliding_window}): "
                "aigc computes full attention, which differs from windowed attention past the window; "
                f"set model.block_size={self.sliding_window} or less"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def attention_bias(self) -> bool:
        """Bias in the fused query/key/value projection."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def is_text_gpt(self) -> bool:
        """A decoder-only model of text tokens only (no image or audio tokens): what fine-tuning starts from and
        what exports to Hugging Face and GGUF."""
        return self.kind == "gpt" and not self.image_size and not self.audio_codes

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # Llama's 2/3 * 4 * d, rounded up to a multiple of 64 (at least 64)
            return max(64, -(-int(8 * self.n_embd / 3) // 64) * 64)
        return 4 * self.n_embd


class LoraConfig(Section):
    """Low-rank adapters (LoRA, Hu et al. 2021): W x + alpha/rank * B A x, with the base W frozen."""

    rank: int | None = Field(None, description="adapter rank; set it to train adapters on a frozen base (none = "
                             "full fine-tuning)")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input in training")
    targets: list[str] = Field(default_factory=list, description="Hugging Face module names to adapt (q_proj, k_proj, "
                               "v_proj, o_proj, gate_proj, up_proj, down_proj; c_attn, c_proj, c_fc for GPT-2); "
                               "default every attention and MLP projection")

    @field_validator("rank")
    @classmethod
    def _rank_positive(cls, rank: int | None) -> int | None:
        if rank is not None and rank < 1:
            raise ValueError(f"a LoRA rank must be at least 1 (got {rank}); leave train.lora.rank unset for full "
                             "fine-tuning")
        return rank

    @property
    def enabled(self) -> bool:
        return self.rank is not None


class TrainConfig(Section):
    max_steps: int = Field(1000, ge=0, description="optimizer steps to run (the cosine schedule's length)")
    max_minutes: float | None = Field(None, gt=0, description="stop after this many minutes of training")
    schedule: Literal["steps", "time"] = Field(
        "steps", description="cosine over max_steps (exactly resumable), or over max_minutes or max_steps, whichever "
        "runs out first (ends on time)"
    )
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch on each process")
    seq_len: int | None = Field(None, ge=2, description="tokens per training sequence; default model.block_size "
                                "(set it lower to fine-tune a long-context model on short windows)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step, over all processes")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr: float | None = Field(None, ge=0, description="learning rate at the end of the cosine; default lr/10")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices")
    decay_embeddings: bool = Field(False, description="apply weight decay to embeddings too")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm (0 = off)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="share of the target probability spread evenly")
    eval_every: int = Field(200, ge=1, description="steps between evaluations on the val split")
    eval_batches: int = Field(20, ge=1, description="micro-batches per evaluation")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    log_every: int = Field(10, ge=1, description="steps between metric lines")
    keep_checkpoints: int = Field(1, ge=1, description="latest checkpoints kept besides the best")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = bfloat16 autocast")
    compile: bool = Field(False, description="torch.compile the model")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default all cores")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp keeps a whole copy of the model on every process; fsdp shards the "
        "weights, gradients and optimizer state between them (checkpoints then hold sharded training state)"
    )
    cpu_offload: bool = Field(False, description="fsdp on GPUs: keep the sharded weights and optimizer state in CPU "
                              "memory between uses")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in the backward "
                                           "pass instead of keeping them (less memory, about a third more compute)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="low-rank adapters instead of full fine-tuning")

    @model_validator(mode="after")
    def _settings_agree(self) -> TrainConfig:
        if self.schedule == "time" and self.max_minutes is None:
            raise ValueError("train.schedule=time needs train.max_minutes")
        if self.cpu_offload and self.parallel != "fsdp":
            raise ValueError("train.cpu_offload moves fsdp's shards to CPU memory; set train.parallel=fsdp with it")
        return self


# The bounds of each sampling setting, written once: the recipe's generate section (and so the CLI's flags), the HTTP
# request fields and SamplingParams all check these. Temperature stops at 2 as in OpenAI's API; the repetition
# penalty's bounds keep a float32 logit divided or multiplied by it finite and non-zero.
NewTokens = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopK = Annotated[int, Field(ge=1)]
TopP = Annotated[float, Field(gt=0, le=1)]
MinP = Annotated[float, Field(ge=0, lt=1)]
RepetitionPenalty = Annotated[float, Field(ge=0.01, le=100)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
SAMPLING_BOUNDS = {"max_new_tokens": NewTokens, "temperature": Temperature, "top_k": TopK | None, "top_p": TopP,
                   "min_p": MinP, "repetition_penalty": RepetitionPenalty, "presence_penalty": Penalty,
                   "frequency_penalty": Penalty}


class LoadSettings(BaseModel):
    """How a trained run is loaded to answer prompts: ``aigc generate``, ``chat``, ``eval`` and ``serve`` take these
    flags from here, so each is declared once."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field("auto", description="torch device of the model: auto (the first GPU when there is one, "
                        "else the CPU), cpu, cuda, cuda:1, mps")
    quantize: Literal["int8"] | None = Field(
        None, description="int8: linear weights as int8 with a scale per row (weight-only: a quarter of the float32 "
        "bytes; see docs/pretrained.md for the quality it costs)")
    backend: Literal["torch", "llamacpp"] = Field(
        "torch", description="what computes a text GPT's logits: torch, or llamacpp (llama.cpp's CPU kernels through "
        "llama-cpp-python, on a GGUF export made once; faster decoding on a CPU, same sampling and stop rules)")


class GenerateConfig(Section):
    """How the run's model samples: what its evaluation uses, and the defaults of ``aigc generate``,
    ``aigc serve`` and the playground (as a Hugging Face model's ``generation_config.json``)."""

    max_new_tokens: NewTokens = Field(128, description="tokens to generate per sample")
    temperature: Temperature = Field(0.8, description="sampling temperature, 0 to 2; 0 = greedy (the most likely token)")
    top_k: TopK | None = Field(40, description="sample among the k most likely tokens (none or null = all)")
    top_p: TopP = Field(1.0, description="sample within the smallest set of tokens with this total probability")
    min_p: MinP = Field(0.0, description="drop tokens less likely than min_p times the most likely one")
    repetition_penalty: RepetitionPenalty = Field(1.0, description="divide the logits of tokens already seen (1 = off)")
    presence_penalty: Penalty = Field(0.0, description="subtract once from the logits of generated tokens")
    frequency_penalty: Penalty = Field(0.0, description="subtract per occurrence from generated tokens' logits")
    stop: list[str] = Field(default_factory=list, description="stop before any of these strings (\\n = newline)")

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop


class EvalConfig(Section):
    max_tokens: int = Field(100_000, ge=1, description="val tokens scored for loss, perplexity and bits per byte")
    samples: int = Field(8, ge=0, description="samples generated for the report (and code checks), with generate.*")


class TuneConfig(Section):
    """``aigc tune``: an Optuna study over config keys, each trial a normal training run."""

    trials: int = Field(20, ge=1, description="trials in the study (finished, pruned and failed ones count)")
    max_minutes: float | None = Field(None, gt=0, description="the whole study's time budget; none = until trials")
    trial_minutes: float = Field(1.0, gt=0, description="each trial's train.max_minutes")
    metric: str = Field("val_loss", description="what the study optimises: val_loss, or a metric of the run's "
                        "evaluation report that its kind offers (aigc tune lists them when given another); loss and "
                        "bits/byte down, the others up")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stop trials whose evaluations trail the others' at the same step")
    sampler: Literal["tpe", "random"] = Field("tpe", description="how trials pick values: TPE (learns from earlier "
                                              "trials) or random (the baseline a search should beat)")
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite in <run>/tune/study.db "
                                "(postgresql://... shares one study between machines)")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="key -> {log_float: [lo, hi]} | {float: [lo, hi]} | {int: [lo, hi]} | "
        "{choice: [a, b, ...]}")
    baseline: bool = Field(False, description="run the recipe's own values of the space's keys as the first trial, "
                           "so the study measures what it is trying to beat the same way")
    heartbeat_seconds: int = Field(60, ge=1, description="with tune.storage (a study shared between processes): a "
                                   "running trial's heartbeat; one silent for three is marked failed, so a process "
                                   "that died does not hold the study")

    @field_validator("storage")
    @classmethod
    def _empty_is_the_default(cls, storage: str | None) -> str | None:
        return storage or None  # tune.storage= on the command line: the run's own SQLite file


_MOVED_TO_GENERATE = ("max_new_tokens", "temperature", "top_k", "beams", "guidance")
_KIND_SECTIONS = ("data", "train", "eval", "generate")  # the sections a kind of run has its own settings in


class Config(Section):
    """A whole run: every stage reads its own section.

    This class holds what every kind of run shares; a run's config is an instance of :func:`config_class` of its
    ``data.kind``, whose sections add that kind's settings (build one with :func:`validate_config`).
    """

    recipe: str = Field("custom", description="name of the recipe this config came from")
    seed: int = Field(1337, description="seed for splits, initialisation, sampling order and dropout")
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @model_validator(mode="before")
    @classmethod
    def _saved_by_older_versions(cls, raw: Any) -> Any:
        """Runs saved before the ``generate`` section kept their sampling settings under ``eval``; runs saved before
        each kind had its own settings kept every kind's: another kind's setting at its default is dropped (one set
        to anything else stays, and is refused)."""
        if not isinstance(raw, dict):
            return raw
        if isinstance(raw.get("eval"), dict) and (moved := {k: raw["eval"][k] for k in _MOVED_TO_GENERATE
                                                            if k in raw["eval"]}):
            raw = {**raw, "eval": {k: v for k, v in raw["eval"].items() if k not in moved},
                   "generate": {**moved, **(raw.get("generate") or {})}}
        for name in _KIND_SECTIONS:
            if isinstance(raw.get(name), dict):
                own = cls.model_fields[name].annotation.model_fields
                raw = {**raw, name: {k: v for k, v in raw[name].items()
                                     if k in own or not _another_kinds_default(name, k, v)}}
        return raw

    @model_validator(mode="after")
    def _adapters_need_a_base(self) -> Config:
        if self.train.lora.enabled and self.model.init is None:
            raise ValueError("train.lora.rank trains adapters on a frozen pretrained base: set "
                             "model.init=RUN_OR_HF_DIR (or leave train.lora.rank unset)")
        if self.model.init is None and self.train.seq_len and self.train.seq_len > self.model.block_size:
            raise ValueError(f"train.seq_len ({self.train.seq_len}) is longer than model.block_size "
                             f"({self.model.block_size})")
        return self

    @property
    def run_dir(self) -> Path:
        return self.run.dir if self.run.dir is not None else Path("runs") / self.recipe

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence: ``train.seq_len``, else the model's whole context."""
        return self.train.seq_len or self.model.block_size


@cache
def config_class(kind: str) -> type[Config]:
    """The config of a run of data ``kind``: :class:`Config` with the kind's ``data`` section, and its ``train``,
    ``eval`` and ``generate`` sections each the shared one plus what the kind adds (``aigc.tasks.<kind>.settings``)."""
    settings = kind_settings().get(kind)
    if settings is None:
        raise _unknown_kind(kind)
    sections: dict[str, Any] = {}
    for name, section in settings.items():
        if name != "data":
            shared = Config.model_fields[name].annotation
            section = create_model(f"{kind.title()}{name.title()}", __base__=(section, shared), __module__=__name__)
        sections[name] = (section, Field(default_factory=section))
    return create_model(f"{kind.title()}Config", __base__=Config, __module__=__name__, **sections)


def _unknown_kind(kind: Any) -> ConfigError:
    return ConfigError(f"data.kind={kind!r} is not a kind of run aigc knows; use one of {', '.join(KINDS)}")


def section_class(kind: str, section: str) -> type[BaseModel]:
    """The class of ``section`` (``generate``, ``data`` ...) in a run of data ``kind``."""
    return config_class(kind).model_fields[section].annotation


def kinds_list(kinds: list[str]) -> str:
    """``["text", "chat", "preference"]`` -> ``"text, chat and preference"``."""
    return " and ".join([", ".join(kinds[:-1]), kinds[-1]]) if len(kinds) > 1 else "".join(kinds)


def owners_of(section: str, key: str) -> list[str]:
    """The kinds of run that have setting ``key`` in ``section`` (every kind, for a shared setting)."""
    if section not in _KIND_SECTIONS:
        return []
    return [kind for kind in KINDS if key in section_class(kind, section).model_fields]


def kinds_generate_settings() -> dict[str, tuple[type[BaseModel], list[str]]]:
    """The ``generate`` settings that kinds add to the shared ones (beams, guidance, voice ...): name -> (a
    generate section that has it, the kinds that have it), for the command line's flags."""
    found: dict[str, tuple[type[BaseModel], list[str]]] = {}
    for kind in KINDS:
        section = section_class(kind, "generate")
        for name in [name for name in section.model_fields if name not in GenerateConfig.model_fields]:
            found.setdefault(name, (section, owners_of("generate", name)))
    return found


def _another_kinds_default(section: str, key: str, value: Any) -> bool:
    """Whether ``key`` is a setting of ``section`` in some kind of run and ``value`` its default there."""
    for kind in KINDS:
        field = section_class(kind, section).model_fields.get(key)
        if field is not None and value == field.get_default(call_default_factory=True):
            return True
    return False


def builtin_recipes() -> dict[str, str]:
    """Name -> one-line description of every recipe shipped in ``aigc/recipes``."""
    found = {}
    for entry in sorted(importlib.resources.files("aigc.recipes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            first = entry.read_text(encoding="utf-8").splitlines()[0]
            found[entry.name.removesuffix(".yaml")] = first.lstrip("# ").strip()
    return found


def _read_recipe(recipe: str) -> tuple[str, dict[str, Any]]:
    """Return (name, raw mapping) of a built-in recipe name or a YAML path."""
    if recipe in builtin_recipes():
        text = importlib.resources.files("aigc.recipes").joinpath(f"{recipe}.yaml").read_text(encoding="utf-8")
        name = recipe
    else:
        path = Path(recipe)
        if not path.is_file():
            names = ", ".join(builtin_recipes())
            raise ConfigError(f"no recipe '{recipe}': give a built-in name ({names}) or the path of a YAML file")
        text = path.read_text(encoding="utf-8")
        name = path.stem
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {recipe} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {recipe} must be a mapping of sections (data:, model:, ...), not {type(raw).__name__}")
    raw.setdefault("recipe", name)
    return name, raw


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def is_section(key: str, kind: str = "text") -> bool:
    """Whether dotted ``key`` names a section of settings (``model``, ``train.lora``) rather than one setting, in a
    run of data ``kind``."""
    return _section_model(key.split("."), kind) is not None


def setting_annotation(key: str, kind: str = "text") -> Any:
    """The type of the setting at dotted ``key`` (``int``, ``float | None``, ...) in a run of data ``kind``, or None
    when ``key`` names a section or nothing."""
    *sections, name = key.split(".")
    section = _section_model(sections, kind)
    field = section.model_fields.get(name) if section is not None else None
    return None if field is None or is_section(key, kind) else field.annotation


def _config_of(kind: str | None) -> type[Config]:
    """:func:`config_class` of ``kind``; the shared :class:`Config` for none or a kind aigc does not know."""
    return config_class(kind) if isinstance(kind, str) and kind in KINDS else Config


def _section_model(path: list[str], kind: str | None = "text") -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``path`` (for listing its valid siblings) in a run of data ``kind``
    (the shared settings for none or a kind aigc does not know)."""
    model: type[BaseModel] = _config_of(kind)
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _data_kind(raw: dict[str, Any]) -> Any:
    """The ``data.kind`` of a raw recipe mapping (text when it names none), as written."""
    data = raw.get("data")
    return data.get("kind", "text") if isinstance(data, dict) else "text"


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` to ``raw`` in place; the value is parsed as YAML."""
    key, sep, value_text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{assignment}' must look like key=value (e.g. train.max_steps=200)")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    parts, kind = key.split("."), _data_kind(raw)
    node = raw
    for i, part in enumerate(parts[:-1]):
        model = _section_model(parts[: i + 1], kind)
        if model is None:
            parent = _section_model(parts[:i], kind) or Config
            raise ConfigError(_unknown_key('.'.join(parts[: i + 1]), _valid_keys(parent)))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is a section; set its keys, e.g. {part}.<key>=...")
        node = child
    node[parts[-1]] = value


def _unknown_key(key: str, valid: list[str]) -> str:
    """The error for a misspelt ``key``: the closest valid key first (``train.max_step`` -> max_steps), then all."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    guess = f"did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'? " if close else ""
    return f"unknown key '{key}'; {guess}valid keys: {', '.join(valid)}"


def _explain(err: ValidationError, kind: str) -> str:
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc) or "config"
        if problem["type"] == "extra_forbidden":
            model = _section_model(loc[:-1], kind) or Config
            owners = owners_of(loc[0], loc[-1]) if len(loc) == 2 else []
            lines.append(_unknown_key(key, _valid_keys(model))
                         + (f" (data.kind={kind}; {key} is a setting of {kinds_list(owners)} runs)" if owners else ""))
        else:
            got = problem.get("input")
            if problem["type"] == "value_error":  # our own validators' messages say what was wrong
                lines.append(f"{key}: {problem['msg'].removeprefix('Value error, ')}")
                continue
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {problem['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_raw(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), default: str = "code") -> dict[str, Any]:
    """The mapping of a recipe (built-in name or YAML path) with the overrides applied, not yet validated."""
    _, raw = _read_recipe(recipe or default)
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def load_config(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), default: str = "code") -> Config:
    """Build a validated :class:`Config` from a recipe (built-in name or YAML path) and overrides."""
    return validate_config(load_raw(recipe, overrides, default))


def validate_config(raw: dict[str, Any]) -> Config:
    """Validate a raw mapping into a :class:`Config`, turning pydantic errors into a :class:`ConfigError`, or a
    :class:`CombinationError` when every problem is between settings rather than in one value."""
    kind = _data_kind(raw)
    if not isinstance(kind, str):
        raise _unknown_kind(kind)
    try:
        return config_class(kind).model_validate(raw)
    except ValidationError as err:
        error = CombinationError if all(_between_settings(p, kind) for p in err.errors()) else ConfigError
        raise error(_explain(err, kind)) from None


def _between_settings(problem: ErrorDetails, kind: str) -> bool:
    """Whether a validation problem was raised by a section's own validator (its location is the section, not a
    field of it): the checks that relate one setting to another, such as heads dividing the width."""
    loc = [str(p) for p in problem["loc"]]
    return problem["type"] == "value_error" and _section_model(loc, kind) is not None


def describe_keys(kind: str | None = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) for every setting, for ``--help``: those of a run of data ``kind``, or with
    no kind the shared ones and then, in each section, the kinds' own, marked with the kinds that have them."""
    config = _config_of(kind)
    rows = [("seed", str(Config.model_fields["seed"].default), Config.model_fields["seed"].description or "")]
    for section_name in ("run", "data", "tokenizer", "model", "train", "eval", "generate", "tune"):
        rows += _rows(section_name, config.model_fields[section_name].annotation)
        if kind is None and section_name in _KIND_SECTIONS:
            rows += _kinds_own_rows(section_name)
    return rows


def _kinds_own_rows(section_name: str) -> list[tuple[str, str, str]]:
    """The rows of the settings that kinds add to ``section_name``, each marked with the kinds that have it."""
    shared = Config.model_fields[section_name].annotation.model_fields
    owned: dict[str, tuple[str, str, list[str]]] = {}
    for kind in KINDS:
        for key, default, meaning in _rows(section_name, section_class(kind, section_name)):
            if key.removeprefix(f"{section_name}.") not in shared:
                owned.setdefault(key, (default, meaning, []))[2].append(kind)
    return [(f"{key} ({', '.join(kinds)})", default, meaning) for key, (default, meaning, kinds) in owned.items()]


def _rows(prefix: str, section: type[BaseModel]) -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) of each setting of ``section`` under ``prefix``, nested sections included."""
    rows = []
    for name, field in section.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows += _rows(f"{prefix}.{name}", field.annotation)
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((f"{prefix}.{name}", "" if default is None else str(default), field.description or ""))
    return rows
