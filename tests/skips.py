"""Under CI a skip is a failure unless its reason is on ``ALLOWED``; the terminal summary prints both lists.

CI is any non-empty ``CI`` other than 0/false/no (``.ci/run`` and most CI services set CI=true). Elsewhere a skip
stays a skip, and the summary says which ones CI would fail. The suite needs nothing outside the repository, so
the list is short: add a reason only for a skip that can never happen in CI, with why.
Registered by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re

import pytest

# reason (a regular expression matched against the whole skip reason) -> why it may skip in CI
ALLOWED: dict[str, str] = {
    r"wrote .*behaviour\.json": "AIGC_WRITE_GOLDEN=1 rewrites the golden file instead of comparing with it",
    r"no CUDA device: tests/gpu runs where one is \(make test-gpu\)": "CI machines have no GPU; `make test-gpu` runs "
    "tests/gpu on one, and `make test` hides GPUs so that the CPU suite runs as written",
    r"fewer than two GPUs: DDP and FSDP over NCCL need two": "a machine with one GPU or none cannot run a two-process "
    "NCCL group",
}

_SEEN = pytest.StashKey[list]()  # (test id, reason, allowed) of every skip of the session


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def allowed(reason: str) -> bool:
    return any(re.fullmatch(pattern, reason, flags=re.S) for pattern in ALLOWED)


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        ok = allowed(reason)
        item.config.stash.setdefault(_SEEN, []).append((report.nodeid, reason, ok))
        if in_ci() and not ok:
            report.outcome = "failed"
            report.longrepr = (f"skipped under CI, and the reason is not on the allow-list in tests/skips.py: "
                               f"{reason}")
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    seen = config.stash.get(_SEEN, [])
    ci = in_ci()
    if not (ci or seen):
        return
    write = terminalreporter.write_line
    terminalreporter.section("skips")
    write("reasons allowed to skip under CI (tests/skips.py):")
    for pattern, why in ALLOWED.items():
        write(f"  {pattern!r}: {why}")
    if not seen:
        write("no test skipped")
    for nodeid, reason, ok in seen:
        verdict = "allowed" if ok else "FAILED (CI)" if ci else "would fail under CI"
        write(f"{verdict}: {nodeid}: {reason}")
