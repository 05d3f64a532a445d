"""``<run>/tune/report.md``: the trials table and Optuna's own plots (history, importances, slices) as PNGs."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

PLOTS = {  # file -> (title, Optuna's matplotlib function, the completed trials it needs)
    "history.png": ("Optimisation history", "plot_optimization_history", 1),
    "importances.png": ("Parameter importances", "plot_param_importances", 2),
    "slice.png": ("Slice plot", "plot_slice", 1),
}


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _note(trial: optuna.trial.FrozenTrial) -> str:
    notes = ["baseline: the recipe's own values"] if trial.user_attrs.get("baseline") else []
    if "retry_of" in trial.user_attrs:
        notes.append(f"the values of trial {trial.user_attrs['retry_of']} again (it was cut short)")
    if "reason" in trial.user_attrs:
        notes.append(trial.user_attrs["reason"])
    elif trial.state == optuna.trial.TrialState.FAIL:  # failed by another process: Optuna's heartbeat check
        notes.append("failed without a reason of its own: its process stopped (killed, or its heartbeat lost)")
    return "; ".join(notes)


def write_report(study: optuna.Study, folder: Path, metric: str) -> Path:
    """Write ``report.md`` (and its PNGs) for ``study`` into ``folder``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    names = sorted({name for t in trials for name in t.params})
    lines = [f"# aigc tune: {metric}, {study.direction.name.lower()}", "",
             f"{len(trials)} trials: {len(complete)} complete, "
             f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)} pruned, "
             f"{sum(t.state == optuna.trial.TrialState.FAIL for t in trials)} failed.", ""]
    if complete:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, {metric} {best.value:.4f}: "
                  + ", ".join(f"`{k}={_cell(v)}`" for k, v in best.params.items()), ""]
    lines += ["| trial | state | " + metric + " | " + " | ".join(names) + " | note |",
              "|---|---|---|" + "---|" * len(names) + "---|"]
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else ""
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | "
                     + " | ".join(_cell(t.params.get(n, "")) for n in names)
                     + f" | {_note(t)} |")
    for file, (title, function, needed) in PLOTS.items():
        if len(complete) < needed or not names:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = getattr(optuna.visualization.matplotlib, function)(study)
            except (ValueError, RuntimeError) as err:  # e.g. importances of parameters that never varied
                lines += ["", f"({title}: not drawn, {err})"]
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.savefig(folder / file, dpi=100, bbox_inches="tight")
        plt.close(figure)
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "report.md"
