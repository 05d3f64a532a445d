"""``aigc tune``: an Optuna study whose trials are ordinary aigc training runs.

Each trial is the recipe with the trial's values set, trained by the one training loop into
``<run>/tune/trials/NNNN`` for ``tune.trial_minutes``. Pruning uses the evaluations the loop makes anyway:
its ``on_evaluation`` hook reports each val loss to the trial and raises ``TrialPruned`` when the pruner
(median or Hyperband) says so. The data is prepared once (``<run>/tune/data-run``) and shared by every trial
unless the space changes ``data.*`` or ``tokenizer.*``.

The study lives in Optuna's storage: SQLite in ``<run>/tune/study.db`` by default, so a study killed at
any moment continues with ``--resume`` (a trial that was running when it died is marked failed and run again
with the same values, finished ones are kept); ``tune.storage=postgresql://...`` shares it between processes on
several machines (a trial whose process stops beating is marked failed by the others, and run again), and
``--workers N`` runs N trial processes here. A trial whose settings cannot go together (heads that do not
divide the width) is pruned with that reason; one that fails (out of memory, NaN) is recorded as failed
with its reason, and the study goes on.

``tune.trials`` counts outcomes: complete, pruned and failed trials, but not a trial that was cut short (killed,
Ctrl-C, SIGTERM), since that one is run again. Failures of a trial's own count as outcomes, or a space whose every
draw diverges would never end.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml

from aigc.config import Config, validate_config
from aigc.errors import AigcError, CombinationError, ConfigError, TrainingError
from aigc.tasks import evaluate, prepare, task_for
from aigc.training.loop import train
from aigc.training.stopping import StopRequest
from aigc.tuning.report import write_report
from aigc.tuning.space import baseline_params, check_space, normalised_space, settings_of, suggest, with_values

STUDY = "aigc"
OPEN_ATTEMPTS = 4
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
LOWER_IS_BETTER = ("val_loss", "bits_per_byte")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
CLAIMED = (*FINISHED, optuna.trial.TrialState.RUNNING)  # what counts toward tune.trials: running ones too
RETRY_OF = "retry_of"  # user attribute of a trial that runs again the values of one cut short
SURPLUS = "surplus"  # user attribute of a trial drawn by one process when others had claimed tune.trials already
PATH_SETTINGS = ("data.paths", "data.val_paths", "tokenizer.path", "model.init")  # relative to where aigc ran


@dataclass
class TuneResult:
    folder: Path
    best_value: float | None
    best_params: dict[str, Any]
    trials: int
    interrupted: bool = False

    def summary(self) -> str:
        if self.best_value is None:
            text = f"{self.trials} trials, none completed: {self.folder / 'report.md'} gives each one's reason"
        else:
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in self.best_params.items())
            text = (f"{self.trials} trials; best {self.best_value:.4f} with {params}\n"
                    f"best recipe: {self.folder / 'best.yaml'} (aigc run {self.folder / 'best.yaml'})\n"
                    f"report: {self.folder / 'report.md'}")
        return text + ("\ninterrupted: continue the study with --resume" if self.interrupted else "")


class TrialInterrupted(TrainingError):
    """Ctrl-C or SIGTERM reached a trial: it is failed (a cut-short run is no result) and the study stops."""


def storage_url(config: Config) -> str:
    return config.tune.storage or f"sqlite:///{(config.run_dir / 'tune' / 'study.db').resolve()}"


def shown_url(config: Config) -> str:
    """The storage URL as messages show it: without its password."""
    try:
        return sqlalchemy.engine.make_url(storage_url(config)).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL at all: nothing in it to hide
        return storage_url(config)


def open_study(config: Config, worker: int = 0) -> optuna.Study:
    """The run's study (created the first time) with a sampler seeded for this start (``worker``: the index of
    this process among ``--workers``), or a clear error when its storage cannot be reached or holds another
    study."""
    tc = config.tune
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
              "hyperband": optuna.pruners.HyperbandPruner(), "none": optuna.pruners.NopPruner()}[tc.pruner]
    (config.run_dir / "tune").mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        try:  # a shared study's trials beat, so any process of it fails one whose process died (Optuna's own check)
            storage = storage_url(config) if tc.storage is None else optuna.storages.RDBStorage(
                tc.storage, heartbeat_interval=tc.heartbeat_seconds, grace_period=3 * tc.heartbeat_seconds,
                failed_trial_callback=_retry)
            try:  # loaded as it is (its direction may be another metric's: _check_same_study says so)
                study = optuna.load_study(study_name=STUDY, storage=storage, pruner=pruner)
            except KeyError:
                study = optuna.create_study(storage=storage, study_name=STUDY, load_if_exists=True, pruner=pruner,
                                            direction="minimize" if tc.metric in LOWER_IS_BETTER else "maximize")
            break
        except Exception as err:  # sqlalchemy and its drivers raise their own kinds
            attempt += 1
            if attempt == OPEN_ATTEMPTS:
                raise ConfigError(f"tune.storage: cannot open the study at {shown_url(config)} "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
            time.sleep(0.5 * attempt)  # processes starting together race to create the tables: try again
    _check_same_study(study, config)
    # each start draws anew: a resumed study or another process of it must not repeat the first one's draws
    # (processes on other machines know nothing of each other's numbers, so a shared study's are random)
    seed = random.SystemRandom().randrange(2**31) if tc.storage else config.seed + 1000 * worker + len(study.trials)
    study.sampler = SAMPLERS[tc.sampler](seed=seed)
    return study


def _check_same_study(study: optuna.Study, config: Config) -> None:
    """A study's trials are comparable only under one recipe, metric, trial length and space: the first process
    to open it records them, and a later one (``--resume``, another machine) that asks for others is refused."""
    asked = json.loads(json.dumps({"recipe": config.recipe, "metric": config.tune.metric,
                                   "trial_minutes": config.tune.trial_minutes,
                                   "space": normalised_space(config.tune.space)}))
    held = study.user_attrs.get("settings")
    if held is None:
        study.set_user_attr("settings", asked)
        return
    if differ := [key for key in asked if held.get(key) != asked[key]]:
        was = "; ".join(f"{key}={held.get(key)}" for key in differ)
        raise ConfigError(f"the study at {shown_url(config)} was made with another {' and '.join(differ)} ({was}): "
                          "its trials would not compare with this command's; give the same settings, or another "
                          "run.dir (for tune.storage, another database)")


def check_study(config: Config, raw: dict[str, Any]) -> None:
    """Everything that can be wrong before a trial runs: the space, the metric, the storage."""
    check_space(config, raw)
    task = task_for(config)
    metrics = task.metrics(config)
    if config.tune.metric not in metrics:
        reported = [name for name, needs in metrics.items() if needs is None]
        raise ConfigError(f"tune.metric={config.tune.metric}: {task.name} runs with these settings report "
                          f"{', '.join(reported)}")
    if (needs := metrics[config.tune.metric]) is not None:
        raise ConfigError(f"tune.metric={config.tune.metric}: this run does not report it; it needs {needs}")
    if config.tune.baseline:
        baseline_params(config)


class Trials:
    """What one process of the study does for each trial: settings, data, training, the metric."""

    def __init__(self, config: Config, raw: dict[str, Any], log: Callable[[str], None], stop: StopRequest):
        self.config, self.raw, self.log = config, raw, log
        self.stop = stop  # Ctrl-C or SIGTERM, between trials or inside one: no new trial starts
        self.folder = config.run_dir / "tune"
        touches_data = any(k.split(".")[0] in ("data", "tokenizer") for k in config.tune.space)
        self.shared_data = None if touches_data else self.folder / "data-run"

    def prepare_shared(self) -> None:
        """Prepare the data once for every trial (when the space leaves data and tokenizer alone)."""
        if self.shared_data is None:
            return
        shared = self.trial_config({}, self.shared_data)
        if not (self.shared_data / "data" / "manifest.json").is_file():
            self.log(f"preparing the data once for every trial in {self.shared_data}")
            prepare(shared)

    def trial_config(self, values: dict[str, Any], run_dir: Path) -> Config:
        raw = with_values(self.raw, values)
        raw.setdefault("run", {})["dir"] = str(run_dir)
        raw.setdefault("train", {})["max_minutes"] = self.config.tune.trial_minutes
        return validate_config(raw)

    def __call__(self, trial: optuna.Trial) -> float:
        values = suggest(trial, self.config.tune.space)
        trial.set_user_attr("pid", os.getpid())  # which process ran it (--workers)
        if _claimed_before(trial) >= self.config.tune.trials:  # processes that started trials together
            trial.set_user_attr(SURPLUS, True)
            trial.set_user_attr("reason", f"not run: the study's {self.config.tune.trials} trials were claimed "
                                "by the time this process drew it")
            trial.study.stop()
            raise optuna.TrialPruned("surplus")
        try:
            return self.run(trial, values)
        except optuna.TrialPruned:
            raise
        except TrialInterrupted as err:  # cut short, not an outcome: --resume runs its values again
            trial.set_user_attr("reason", str(err))
            _retry(trial.study, trial)
            raise
        except BaseException as err:  # its data, out of memory, NaN, a bug: failed with the reason
            trial.set_user_attr("reason", self.reason(trial, err))
            raise

    def trial_dir(self, trial: optuna.Trial) -> Path:
        return self.folder / "trials" / f"{trial.number:04d}"

    def reason(self, trial: optuna.Trial, err: BaseException) -> str:
        """What the report says of a failed trial: an AigcError's message says it all; anything else (a bug in
        aigc) is named by its type, with its traceback in the trial's folder."""
        text = (str(err).splitlines() or [""])[0][:300]
        if isinstance(err, AigcError):
            return text
        folder = self.trial_dir(trial)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text("".join(traceback.format_exception(err)), encoding="utf-8")
        return f"{type(err).__name__}: {text} (traceback: {folder / 'error.txt'})"

    def run(self, trial: optuna.Trial, values: dict[str, Any]) -> float:
        """Train the trial's run with ``values`` set and return its metric (pruned when the values cannot go
        together, or when the pruner says so at an evaluation)."""
        try:
            config = self.trial_config(values, self.trial_dir(trial))
        except CombinationError as err:
            trial.set_user_attr("reason", err.reason)
            raise optuna.TrialPruned(str(err)) from None
        self.data_for(config)
        if self.stop.requested:
            raise TrialInterrupted("interrupted before its training (Ctrl-C or SIGTERM); the study stops")

        def report(step: int, val_loss: float) -> None:
            trial.report(val_loss, step)
            if trial.should_prune():
                trial.set_user_attr("reason", f"pruned at step {step}: val loss {val_loss:.4f}")
                raise optuna.TrialPruned(f"val loss {val_loss:.4f} at step {step}")

        pruning = report if self.config.tune.metric == "val_loss" else None
        result = train(config, log=lambda line: None, on_evaluation=pruning)
        if result.interrupted:  # the training loop caught the signal: a cut-short run is no result
            self.stop.requested = True
            raise TrialInterrupted(f"interrupted at step {result.steps} (Ctrl-C or SIGTERM); the study stops")
        value = self.metric(config, result.best_val_loss)
        if value is None or not math.isfinite(value):
            raise AigcError(f"the run produced no finite {self.config.tune.metric} (no evaluation?)")
        return value

    def data_for(self, config: Config) -> None:
        """The trial's prepared data: the shared data linked into its run folder (the tokenizer copied), or, when
        the space changes data or tokenizer settings, prepared with the trial's own."""
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.shared_data is None:
            prepare(config)
            return
        if not (run_dir / "data").exists():
            (run_dir / "data").symlink_to((self.shared_data / "data").resolve(), target_is_directory=True)
        (run_dir / "tokenizer.json").write_bytes((self.shared_data / "tokenizer.json").read_bytes())

    def metric(self, config: Config, best_val_loss: float | None) -> float | None:
        name = self.config.tune.metric
        if name == "val_loss":
            return best_val_loss
        report = evaluate(config.run_dir, log=lambda line: None, recipe=config).report
        return task_for(config).metric(report, name)


def tune(config: Config, raw: dict[str, Any], resume: bool = False, workers: int = 1,
         log: Callable[[str], None] = print, worker_command: list[str] | None = None, worker: int = 0) -> TuneResult:
    """Run (or with ``resume`` continue) the study of ``config.tune``; write ``best.yaml`` and ``report.md``.

    ``raw``: the recipe mapping with the command line's overrides, what each trial starts from. ``workers``:
    trial processes on this machine: this one and ``workers - 1`` helpers started as ``worker_command`` (the
    CLI's own command) with ``--worker K``, each with its share of the cores. ``worker``: this process is helper
    K (0: the one that starts them); a helper runs trials and leaves the report to the first.
    """
    cores = os.cpu_count() or 1
    if not 1 <= workers <= cores:
        raise ConfigError(f"--workers {workers}: give 1 to {cores} (this machine's cores; a trial needs one)")
    if workers > 1 and not worker and worker_command is None:
        raise ConfigError("--workers starts more processes of the command line; from Python, run tune() in each")
    trial_raw = with_values(raw, {"train.threads": max(1, cores // workers)}) if workers > 1 else raw
    check_study(config, trial_raw)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's reason is in the progress line
    folder = config.run_dir / "tune"
    local = config.tune.storage is None
    if local and not worker and (folder / "study.db").exists() and not resume:
        if _has_run_a_trial(config):
            raise ConfigError(f"{folder} already holds a study: continue it with --resume, or use another run.dir")
        (folder / "study.db").unlink()  # a start that failed before its first trial (its data, say): start afresh
    elif local and resume and not (folder / "study.db").exists():
        log(f"--resume: no study in {folder} yet, starting one")
    study = open_study(config, worker)
    if local and not worker:
        _fail_stale(study, log)
    elif not local:  # Optuna's heartbeats tell the trials of processes that died elsewhere
        optuna.storages.fail_stale_trials(study)
    if config.tune.baseline and not worker:  # once per study: a resumed or shared study already holds it
        study.enqueue_trial(baseline_params(config), user_attrs={"baseline": True}, skip_if_exists=True)
    with StopRequest() as stop:  # Ctrl-C or SIGTERM: the running trial fails as interrupted, no new one starts
        trials = Trials(config, trial_raw, log, stop)
        trials.prepare_shared()
        # helpers in sessions of their own: the terminal's Ctrl-C reaches this process, which passes it on once
        helpers = [] if worker else [subprocess.Popen([*worker_command, "--worker", str(k)], start_new_session=True)
                                     for k in range(1, workers)]
        started, budget = time.monotonic(), (config.tune.max_minutes or math.inf) * 60

        def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if stop.requested:
                study.stop()
            best = _best(study)
            left = budget - (time.monotonic() - started)
            log(f"trial {trial.number}: {trial.state.name.lower()}"
                + (f" {trial.value:.4f}" if trial.value is not None else f" ({trial.user_attrs.get('reason', '')})")
                + f" ({_count(study, FINISHED)} of {config.tune.trials} finished)"
                + (f"; best {best.value:.4f} (trial {best.number})" if best else "")
                + (f"; {left / 60:.1f} min left" if math.isfinite(left) and left > 0 else
                   "; tune.max_minutes spent: no new trial starts" if math.isfinite(left) else ""))

        def enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # trials still running in other processes count too, or each process would start one more at the end
            if _count(study, CLAIMED) >= config.tune.trials:
                study.stop()

        remaining = budget - (time.monotonic() - started)
        try:
            if _count(study, CLAIMED) < config.tune.trials and remaining > 0 and not stop.requested:
                study.optimize(trials, callbacks=[enough, progress], catch=(Exception,),
                               timeout=None if math.isinf(remaining) else remaining, gc_after_trial=True)
        except BaseException:  # a second Ctrl-C, or this process failing: its helpers must not run on alone
            stop.requested = True
            raise
        finally:
            _stop_helpers(helpers, stop.requested, log)
    best = _best(study)
    if not worker:
        write_report(study, folder, config.tune.metric)
        if best is not None:
            _write_best(study, best, config, raw)
    return TuneResult(folder, best.value if best else None, dict(best.params) if best else {},
                      _count(study, FINISHED), stop.requested)


def _write_best(study: optuna.Study, best: optuna.trial.FrozenTrial, config: Config, raw: dict[str, Any]) -> None:
    """``<run>/tune/best.yaml``: the recipe with the best trial's values, which ``aigc run`` trains from anywhere
    (its paths made absolute) into ``runs/<recipe>-tuned``, not over the original."""
    best_raw = with_values(raw, settings_of(config.tune.space, best.params))
    best_raw.pop("run", None)
    best_raw.pop("tune", None)
    best_raw["recipe"] = f"{config.recipe}-tuned"
    for key in PATH_SETTINGS:
        section, name = key.split(".")
        if value := (best_raw.get(section) or {}).get(name):
            best_raw[section][name] = [_absolute(v) for v in value] if isinstance(value, list) else _absolute(value)
    header = (f"# best of {len(study.trials)} trials of aigc tune: {config.tune.metric} {best.value:.4f} after "
              f"{config.tune.trial_minutes:g}-minute trials (train.max_minutes below is the recipe's)\n")
    (config.run_dir / "tune" / "best.yaml").write_text(header + yaml.safe_dump(best_raw, sort_keys=False),
                                                       encoding="utf-8")


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _stop_helpers(helpers: list[subprocess.Popen], interrupted: bool, log: Callable[[str], None]) -> None:
    """Wait for the ``--workers`` helpers, first passing on an interruption (SIGTERM: each fails its running
    trial as interrupted and stops); a helper that ended badly is named."""
    for k, helper in enumerate(helpers, start=1):
        if interrupted:
            helper.terminate()
        if helper.wait() not in (0, -signal.SIGTERM):
            log(f"--workers: helper {k} stopped with exit code {helper.returncode}; its trials are in the report")


def _count(study: optuna.Study, states: tuple[optuna.trial.TrialState, ...]) -> int:
    """Trials in ``states`` that count toward ``tune.trials``."""
    return len(_counted(study.get_trials(deepcopy=False), states))


def _counted(trials: list[optuna.trial.FrozenTrial], states: tuple[optuna.trial.TrialState, ...],
             ) -> list[optuna.trial.FrozenTrial]:
    """All ``trials`` in ``states`` but those cut short and run again, and the surplus ones never run."""
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    return [t for t in trials if t.state in states and t.number not in retried and not t.user_attrs.get(SURPLUS)]


def _claimed_before(trial: optuna.Trial) -> int:
    """How many trials numbered before ``trial`` count toward ``tune.trials`` (running ones included). Trial numbers
    are handed out in one order by the storage, so of processes that start trials together exactly the first ones
    to reach ``tune.trials`` run: the study holds as many outcomes as asked, not one per process more."""
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    return len(_counted(earlier, CLAIMED))


def _retry(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.Trial) -> None:
    """Queue ``trial``'s values again (once): it was cut short (its process killed, Ctrl-C), which is no outcome.
    Also Optuna's ``failed_trial_callback`` for trials whose heartbeat stopped in a shared study."""
    if any(t.user_attrs.get(RETRY_OF) == trial.number for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})


def _has_run_a_trial(config: Config) -> bool:
    """Whether the run's SQLite study holds a trial that started (not only the enqueued baseline)."""
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage_url(config))
    except KeyError:  # the file exists but the study was never created in it
        return False
    return any(t.state != optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    return study.best_trial if _count(study, (optuna.trial.TrialState.COMPLETE,)) else None


def _fail_stale(study: optuna.Study, log: Callable[[str], None]) -> None:
    """Trials left running by a process of this machine that died: marked failed, so the study counts them and
    goes on. One whose process still runs (the study continued in another terminal) is left to it."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _running_elsewhere(trial.user_attrs.get("pid")):
            log(f"trial {trial.number} is running in process {trial.user_attrs['pid']}: left to it")
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "reason", "the process running it stopped")
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        _retry(study, trial)
        log(f"trial {trial.number} was running when the study stopped: marked failed, its values run again")


def _running_elsewhere(pid: int | None) -> bool:
    """Whether process ``pid`` lives and is not this one (a container's PID 1 may be the trial's and ours)."""
    if pid is None or pid == os.getpid():  # it died before recording its process, or its number is ours now
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
