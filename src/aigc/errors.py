"""Typed errors: every failure a user can cause is an ``AigcError`` with a message that says what to do.

Library code raises these; only ``aigc.cli`` turns them into exit codes (and, later, the server into
HTTP statuses). Anything else that escapes is a bug in aigc, not in the user's input.
"""

from __future__ import annotations


class AigcError(Exception):
    """Base class of every user-facing failure; ``str(err)`` is the whole message shown to the user."""

    exit_code = 2


class ConfigError(AigcError):
    """A recipe, an override or a combination of settings is invalid."""


class CombinationError(ConfigError):
    """Settings that are each valid alone but cannot go together (heads that do not divide the width): what a
    tuning trial that draws them is pruned for, where a single bad value refuses the whole study."""

    @property
    def reason(self) -> str:
        """The last problem the message names, on one line (for a trial's note)."""
        return str(self).splitlines()[-1].strip()


class DataError(AigcError):
    """Input data is missing, unreadable, or nothing usable remains after cleaning."""


class CheckpointError(AigcError):
    """A checkpoint or run directory is missing, incomplete, corrupt or incompatible."""


class TrainingError(AigcError):
    """Training cannot start or cannot continue (divergence, out of memory, mismatched shards)."""


class GenerationError(AigcError):
    """A generation request that cannot be served as asked (bad parameters, empty prompt, prompt too long)."""
