"""Every option of ``aigc serve``, typed, with its meaning and default written once.

``aigc serve --help`` is generated from :class:`ServeSettings` (see :mod:`aigc.flags`); a few flags keep
the spelling they had before the settings existed (``--api-key``, ``--timeout``, ...), named on their field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import ConfigDict, Field, field_validator

from aigc.config import LoadSettings
from aigc.errors import ConfigError

API_KEY_ENV = "AIGC_API_KEY"


class ServeSettings(LoadSettings):
    """Address, security, limits of one server, and how it loads its models (device, quantize)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="interface to bind (127.0.0.1: this machine only; 0.0.0.0: every "
                      "interface, set API keys then)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_keys: list[str] = Field(default_factory=list, description="require 'Authorization: Bearer KEY' on every route "
                                "but /health and / (repeatable; also $AIGC_API_KEY)",
                                json_schema_extra={"flag": "--api-key", "repeat": True})
    api_key_file: Path | None = Field(None, description="file with one API key per line (blank lines are skipped)")
    cors_origins: list[str] = Field(default_factory=list, description="allow browser requests from this origin "
                                    "(repeatable)", json_schema_extra={"flag": "--cors-origin", "repeat": True})
    max_batch: int = Field(32, ge=1, description="sequences decoded together (1 = no batching)")
    max_waiting: int = Field(256, ge=1, description="queued requests per model before 429")
    max_tokens: int | None = Field(None, ge=1, description="cap on a request's max_tokens (none: the model's context)")
    max_n: int = Field(8, ge=1, description="cap on a request's n")
    max_body_bytes: int = Field(1_000_000, ge=1, description="larger request bodies get 413")
    prefix_cache_mb: float = Field(256.0, ge=0, description="memory per model for the keys and values of prompt "
                                   "prefixes, reused by later prompts that start the same (a shared system prompt, a "
                                   "chat's earlier turns); least recently used go first; 0 = off")
    prefill_chunk: int = Field(512, ge=1, description="prompt tokens prefilled between two decoding steps: a long "
                               "prompt is prefilled in chunks, so the streams already running keep their pace")
    timeout_s: float = Field(600.0, gt=0, description="per-request deadline in seconds (then 504)",
                             json_schema_extra={"flag": "--timeout"})
    ping_interval_s: float = Field(5.0, gt=0, description="seconds between keep-alive comments in a quiet stream",
                                   json_schema_extra={"flag": "--ping-interval"})
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM / Ctrl-C, seconds to let running requests "
                                   "finish before the rest get 503", json_schema_extra={"flag": "--drain-timeout"})
    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, keys: list[str]) -> list[str]:
        if any(not key.strip() for key in keys):
            raise ValueError("an API key is empty, which would turn authentication off; give a real key")
        return keys

    def with_keys_from(self, environ: Mapping[str, str]) -> ServeSettings:
        """These settings with every API key gathered into ``api_keys``: the flags', the key file's, ``$AIGC_API_KEY``.

        An empty ``--api-key`` or a set but empty ``$AIGC_API_KEY`` is refused (it would silently serve without
        authentication); blank lines of the key file are skipped, but a key file with no key at all is refused.
        """
        keys = list(self.api_keys)
        if any(not key.strip() for key in keys):
            raise ConfigError("an API key is empty, which would turn authentication off; give a real key or leave "
                              "--api-key out")
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"--api-key-file {self.api_key_file}: cannot read it ({err})") from None
            found = [line.strip() for line in lines if line.strip()]
            if not found:
                raise ConfigError(f"--api-key-file {self.api_key_file} has no key; write one key per line")
            keys += found
        if API_KEY_ENV in environ:
            if not environ[API_KEY_ENV].strip():
                raise ConfigError(f"${API_KEY_ENV} is set but the API key is empty, which would turn authentication "
                                  "off; give a real key or unset it")
            keys.append(environ[API_KEY_ENV].strip())
        return self.model_copy(update={"api_keys": keys, "api_key_file": None})
