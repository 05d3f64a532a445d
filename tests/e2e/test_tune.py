"""aigc tune end to end on a tiny model: a study, pruning, --resume after SIGKILL, two workers, bad spaces.

The commands run in this process (tests/e2e/helpers.py); a study that is killed or interrupted runs in a process
of its own."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from aigc.config import load_config
from tests.conftest import fixture
from tests.e2e.helpers import aigc

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8",
        "train.eval_every=5", "train.eval_batches=2", "train.threads=1", "train.warmup_steps=5",
        "train.schedule=steps", "train.max_steps=30", "tune.trial_minutes=5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "shakespeare.txt"
    path.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="aigc", storage=f"sqlite:///{run / 'tune' / 'study.db'}")


def _args(corpus: Path, run: Path, space: str, *extra: str) -> list[str]:
    return ["tune", "text", f"data.paths=[{corpus}]", f"run.dir={run}", *TINY, f"tune.space={space}", *extra]


def test_a_study_writes_a_best_recipe_that_aigc_run_accepts(corpus, tmp_path):
    run = tmp_path / "study"
    done = aigc(*_args(corpus, run, "{train.lr: {log_float: [1.0e-4, 1.0e-2]}, model.n_head: {choice: [2, 3]}}",
                       "tune.trials=4", "tune.baseline=true"))
    assert done.returncode == 0, done.stderr
    assert "(4 of 4 finished)" in done.stderr and "best recipe:" in done.stdout
    trials = _study(run).trials
    recipe = load_config("text")  # the first trial is the recipe's own point of the space
    assert trials[0].params == {"train.lr": recipe.train.lr, "model.n_head": 2}, trials[0].params
    assert "baseline: the recipe's own values" in (run / "tune" / "report.md").read_text()
    invalid = [t for t in trials if t.params["model.n_head"] == 3]
    assert len(trials) == 4 and len(invalid) < 4  # each valid trial trained in a run folder of its own:
    assert len(list((run / "tune" / "trials").iterdir())) == 4 - len(invalid)
    assert all(t.state == optuna.trial.TrialState.PRUNED and "divisible" in t.user_attrs["reason"] for t in invalid)
    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    assert best["model"]["n_head"] == 2 and best["recipe"] == "text-tuned" and "tune" not in best
    assert (run / "tune" / "report.md").read_text().count("| pruned |") == len(invalid)
    assert (run / "tune" / "history.png").stat().st_size > 1000
    config = load_config(str(run / "tune" / "best.yaml"))
    assert config.train.lr == best["train"]["lr"]
    again = aigc("run", run / "tune" / "best.yaml", f"run.dir={tmp_path / 'rerun'}", "train.max_steps=5",
                 "eval.samples=0")
    assert again.returncode == 0, again.stderr


def test_a_clearly_worse_trial_is_pruned(corpus, tmp_path):
    run = tmp_path / "pruning"
    done = aigc(*_args(corpus, run, "{train.lr: {choice: [0.01, 1.0e-7]}}", "tune.trials=6", "train.max_steps=40"))
    assert done.returncode == 0, done.stderr
    trials = _study(run).trials
    slow = [t for t in trials if t.params["train.lr"] < 1e-6]
    assert any(t.state == optuna.trial.TrialState.PRUNED and "pruned at step" in t.user_attrs["reason"] for t in slow), \
        [(t.params, t.state, t.user_attrs) for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials if t.params["train.lr"] > 1e-3)


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_study_and_reruns_no_trial(corpus, tmp_path):
    run = tmp_path / "killed"
    args = _args(corpus, run, "{train.lr: {log_float: [1.0e-3, 1.0e-2]}}", "tune.trials=4", "tune.pruner=none",
                 "train.max_steps=60", "tune.baseline=true")
    process = subprocess.Popen([sys.executable, "-m", "aigc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / "tune" / "trials" / "0001").is_dir():  # trial 0 finished, trial 1 running
        assert time.monotonic() < deadline and process.poll() is None, "the study never reached its second trial"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {t.number: t.value for t in _study(run).trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert aigc(*args).returncode != 0  # a second start without --resume is refused, nothing overwritten
    resumed = aigc(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(run).trials
    assert {t.number: t.value for t in trials if t.number in before} == before  # kept, not rerun
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and "stopped" in killed[0].user_attrs["reason"], killed
    # the killed trial is no outcome: its values run again, and four trials count toward tune.trials=4
    again = [t for t in trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(again) == 1 and again[0].params == killed[0].params, [t.user_attrs for t in trials]
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials if t is not killed[0])
    assert [t.number for t in trials if t.user_attrs.get("baseline")] == [0]  # not enqueued again by --resume


@pytest.mark.slow
def test_resume_while_the_study_runs_leaves_its_running_trial_alone(corpus, tmp_path):
    run = tmp_path / "twice"
    args = _args(corpus, run, "{train.lr: {log_float: [1.0e-3, 1.0e-2]}}", "tune.trials=2", "tune.pruner=none")
    # the first process's trial outlasts the second's start; the second's is short
    first = subprocess.Popen([sys.executable, "-m", "aigc", *args, "train.max_steps=3000"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "tune" / "trials" / "0000").is_dir():
        assert time.monotonic() < deadline and first.poll() is None, "the study never started a trial"
        time.sleep(0.05)
    second = aigc(*args, "train.max_steps=50", "--resume")  # the same study from another terminal
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err, second.stderr)
    assert "trial 0 is running in process" in second.stderr
    trials = _study(run).trials  # one each: the second counted the first's running trial toward tune.trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(corpus, tmp_path):
    run = tmp_path / "workers"
    # trials of 150 steps: long enough that the helper process has imported torch before this one ran all four
    done = aigc(*_args(corpus, run, "{train.lr: {log_float: [1.0e-3, 1.0e-2]}}", "tune.trials=4", "tune.pruner=none",
                       "train.max_steps=150"), "--workers", "2")
    assert done.returncode == 0, done.stderr
    # a process that draws a trial after the other claimed the fourth records it as a surplus, never run (on a
    # loaded machine, seen under pytest-xdist)
    drawn = _study(run).trials
    surplus = [t for t in drawn if t.user_attrs.get("surplus")]
    trials = [t for t in drawn if not t.user_attrs.get("surplus")]
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)  # not one more
    assert all(t.state == optuna.trial.TrialState.PRUNED and "not run" in t.user_attrs["reason"] for t in surplus)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials
    assert len({t.params["train.lr"] for t in trials}) == len(trials)  # each process draws its own values
    assert done.stdout.count("best recipe:") == 1  # the helper leaves the summary to the first process


@pytest.mark.parametrize(("space", "extra", "message"), [
    ("{train.learning_rate: {float: [0.1, 0.2]}}", [], "unknown key"),
    ("{train.lr: {float: [0.2, 0.1]}}", [], "is empty"),
    ("{train.lr: {uniform: [0.1, 0.2]}}", [], "give one of log_float"),
    ("{model.n_layer: {int: [1.5, 3]}}", [], "whole numbers"),
    ("{model.norm: {choice: [layernorm, batchnorm]}}", [], "not a valid setting"),
    ("{train.lr: {log_float: [0, 0.1]}}", [], "positive low end"),
    ("{}", [], "tune.space is empty"),
    ("{train.lr: {float: [0.1, 0.2]}}", ["tune.baseline=true"], "train.lr=0.0026 lies outside tune.space.train.lr"),
    ("{train.lr: {float: [0.1, 0.2]}}", ["tune.metric=bleu"],
     "text runs with these settings report val_loss, bits_per_byte"),
    ("{train.lr: {float: [0.1, 0.2]}}", ["tune.storage=postgresql://nobody:secret@127.0.0.1:9/none"],
     "cannot open the study at postgresql://nobody:***@"),
    ("{train.lr: {float: [0.1, 0.2]}}", ["--workers", "0"], "--workers 0: give 1 to"),
])
def test_bad_studies_are_refused_before_any_trial(corpus, tmp_path, space, extra, message):
    run = tmp_path / "bad"
    done = aigc(*_args(corpus, run, space, *extra))
    assert done.returncode != 0 and "Traceback" not in done.stderr and message in done.stderr, done.stderr
    assert not (run / "tune" / "trials").exists()


def test_a_study_whose_data_fails_can_start_again_without_resume(corpus, tmp_path):
    """The data error is the user's to fix; the empty study it leaves must not then demand --resume."""
    run, space = tmp_path / "run", "{train.lr: {float: [0.001, 0.004]}}"
    failed = aigc(*_args(corpus, run, space, f"data.paths=[{tmp_path / 'missing.txt'}]", "tune.baseline=true"))
    assert failed.returncode != 0 and "Traceback" not in failed.stderr and "missing.txt" in failed.stderr
    done = aigc(*_args(corpus, run, space, "tune.trials=1", "tune.baseline=true"))
    assert done.returncode == 0, done.stderr
    assert [t.user_attrs.get("baseline") for t in _study(run).trials] == [True]


def _postgres_binaries() -> tuple[str, str] | None:
    """initdb and pg_ctl: on PATH, or where Debian's postgresql package puts them."""
    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        found = [shutil.which(name, path=folder) for name in ("initdb", "pg_ctl")]
        if all(found):
            return found[0], found[1]
    return None


@pytest.fixture
def postgres():
    """A PostgreSQL server of the test's own, on a free port, as the postgres user when the tests run as root."""
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are missing; .ci/run installs Debian's postgresql")
    initdb, pg_ctl = binaries
    folder = Path(tempfile.mkdtemp(prefix="aigc-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "aigc", "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-p {port} -k {folder} -h 127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://aigc@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_study_in_postgresql(corpus, tmp_path, postgres):
    """As two machines would: two aigc tune processes, each with its own run folder, one study in one database."""
    common = ["{train.lr: {log_float: [1.0e-3, 1.0e-2]}}", "tune.trials=4", "tune.pruner=none",
              f"tune.storage={postgres}"]
    processes = [subprocess.Popen([sys.executable, "-m", "aigc", *_args(corpus, tmp_path / f"machine{i}", *common)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    trials = optuna.load_study(study_name="aigc", storage=postgres).trials
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 4 and len({t.user_attrs["pid"] for t in finished}) == 2  # as many as asked
    assert all(t.user_attrs.get("surplus") for t in trials if t not in finished)  # drawn together, never run


@pytest.mark.slow
def test_a_killed_process_does_not_hold_a_postgresql_study(corpus, tmp_path, postgres):
    """A machine killed in the middle of a trial: its trial stops beating, and the next process marks it failed."""
    common = ["{train.lr: {log_float: [1.0e-3, 1.0e-2]}}", "tune.trials=3", "tune.pruner=none", "train.max_steps=150",
              f"tune.storage={postgres}", "tune.heartbeat_seconds=1"]
    killed = subprocess.Popen([sys.executable, "-m", "aigc", *_args(corpus, tmp_path / "killed", *common)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (tmp_path / "killed" / "tune" / "trials" / "0000").is_dir():  # its first trial is running
        assert time.monotonic() < deadline and killed.poll() is None, "the first process never started a trial"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    time.sleep(4)  # three missed heartbeats of one second: the trial is stale from now on
    survivor = aigc(*_args(corpus, tmp_path / "survivor", *common))
    assert survivor.returncode == 0, survivor.stderr
    trials = optuna.load_study(study_name="aigc", storage=postgres).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 3
    assert trials[0].user_attrs["pid"] == killed.pid
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0  # run again
    assert "its process stopped" in (tmp_path / "survivor" / "tune" / "report.md").read_text()


def test_a_space_over_data_settings_prepares_each_trial_itself(corpus, tmp_path):
    run = tmp_path / "vocab"
    done = aigc(*_args(corpus, run, "{data.min_chars: {choice: [1, 400]}}", "tune.trials=2", "tune.pruner=none"))
    assert done.returncode == 0, done.stderr
    trials = sorted((run / "tune" / "trials").iterdir())
    assert trials and all((t / "data").is_dir() and not (t / "data").is_symlink() for t in trials)
    assert not (run / "tune" / "data-run").exists()


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(corpus, tmp_path):
    run = tmp_path / "diverges"
    done = aigc(*_args(corpus, run, "{train.lr: {choice: [0.003, 1.0e+4]}}", "tune.trials=4", "tune.pruner=none"))
    assert done.returncode == 0, done.stderr
    trials = _study(run).trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(trials) == 4 and failed, [(t.params, t.state) for t in trials]
    assert all(t.params["train.lr"] > 1 and "the loss became nan" in t.user_attrs["reason"] for t in failed), \
        [t.user_attrs for t in failed]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials if t.params["train.lr"] < 1)
    assert failed[0].user_attrs["reason"] in (run / "tune" / "report.md").read_text()
    assert yaml.safe_load((run / "tune" / "best.yaml").read_text())["train"]["lr"] == 0.003


@pytest.mark.slow
def test_ctrl_c_stops_the_study_and_resume_continues_it_with_new_draws(corpus, tmp_path):
    run = tmp_path / "interrupted"  # data.paths relative to where aigc runs: best.yaml must work from anywhere
    args = [*_args(corpus.name, run, "{train.lr: {log_float: [1.0e-3, 1.0e-2]}}", "tune.trials=4", "tune.pruner=none")]
    # a first trial too long to finish before the Ctrl-C (the --resume below: the same study, short trials)
    process = subprocess.Popen([sys.executable, "-m", "aigc", *args, "train.max_steps=100000"], cwd=corpus.parent,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / "tune" / "trials" / "0000").is_dir() or not _study(run).trials[0].intermediate_values:
        assert time.monotonic() < deadline and process.poll() is None, "the study never trained a trial"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "continue the study with --resume" in out, (out, err)
    first = _study(run).trials  # a cut-short run is never a result: it failed, and its values wait to run again
    assert [t.state for t in first] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING], first
    assert "interrupted at step" in first[0].user_attrs["reason"]
    refused = aigc(*args, "tune.metric=bits_per_byte", "--resume", cwd=corpus.parent)
    assert refused.returncode == 2 and "was made with another metric" in refused.stderr, refused.stderr
    resumed = aigc(*args, "--resume", cwd=corpus.parent)
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(run).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 4
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0
    assert len({t.params["train.lr"] for t in trials}) == 4  # otherwise the resumed start did not repeat a draw
    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    assert best["data"]["paths"] == [str(corpus)]
