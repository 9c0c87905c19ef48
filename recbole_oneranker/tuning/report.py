"""Reports of the Optuna studies made by ``tuning/search.py``: markdown tables and plots.

    python tuning/report.py --study OneRanker-ml-100k-ndcg10             # -> studies/<study>/report.md
    python tuning/report.py --study OneRanker-ml-100k-ndcg10 --out results/tuning   # rewrites the committed report
    python tuning/report.py --study S --storage postgresql://user:pw@db/optuna
    python tuning/report.py --compare OneRanker-ml-100k-ndcg10 HSTU-ml-100k-ndcg10 SASRec-ml-100k-ndcg10

``report.md`` holds the command(s) that ran the study, the best configuration(s) as a ``run_recbole`` command, the
top trials with their validation objective(s) and the test metrics stored with each trial (read, never tuned on),
and the counts by state. Plots (``optuna.visualization``: HTML with plotly, PNG with matplotlib): optimisation
history, parameter importances and, for several objectives, the Pareto front. ``--compare`` puts several studies
side by side under the same trial budget: the first N finished trials of each, N the smallest study's count; studies
of several objectives are compared by their Pareto fronts, drawn together in ``compare_<studies>.png``.

A study is read from ``<out>/<study>/`` (default ``studies/``), else from the committed ``results/tuning/<study>/``,
which is only read: its report and plots are rewritten only when ``--out results/tuning`` asks for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from recbole_oneranker.tuning.storage import DEFAULT_OUT, FINISHED, USAGE_ERROR, UsageError, load_study, state_counts

TOP_TRIALS = 10
# Parameter importances fitted on fewer complete trials than this are mostly noise (a rule of thumb: the committed
# ml-100k studies search 6-10 parameters); their plots say so.
MIN_TRIALS_FOR_IMPORTANCES = 20


# -- reading studies -------------------------------------------------------------------------------------------------


def objectives_of(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("objectives") or [f"objective {i}" for i in range(len(study.directions))])


def state_summary(study: optuna.Study) -> str:
    """``COMPLETE 3, FAIL 1``: the study's trials counted by state, in Optuna's order of states."""
    counts = state_counts(study)
    return ", ".join(f"{state.name} {counts[state]}" for state in TrialState if counts[state]) or "no trials"


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials, best first: by the objective, or the Pareto front first for several objectives."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    front = {trial.number for trial in study.best_trials} if len(study.directions) > 1 else set()
    return sorted(complete, key=lambda t: (t.number not in front, sign * t.values[0], t.number))


def _metric(result: dict[str, float] | None, name: str) -> str:
    return f"{result[name]:.4f}" if result and name in result else "-"


def _params(trial: FrozenTrial) -> str:
    return ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}" for name, value in trial.params.items()
    )


# -- plots -----------------------------------------------------------------------------------------------------------

# A plot: (title, file stem, the name of the function in optuna.visualization and in its matplotlib module, kwargs).
Plot = tuple[str, str, str, dict[str, Any]]


def importance_caveat(study: optuna.Study) -> str | None:
    """The warning a parameter-importance plot carries when too few trials completed to trust it, or None."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete >= MIN_TRIALS_FOR_IMPORTANCES:
        return None
    return f"caveat: from {complete} complete trials (< {MIN_TRIALS_FOR_IMPORTANCES}), mostly noise"


def _save(
    study: optuna.Study, folder: Path, stem: str, function: str, kwargs: dict[str, Any], caveat: str | None = None
) -> list[str]:
    """Draw one plot as ``<stem>.html`` (plotly) and ``<stem>.png`` (matplotlib), each when its library is installed,
    with ``caveat`` under its title; returns the files written."""
    files = []
    if importlib.util.find_spec("plotly") is not None:
        figure = getattr(optuna.visualization, function)(study, **kwargs)
        if caveat:
            figure.update_layout(title_text=f"{figure.layout.title.text}<br><sup>{caveat}</sup>")
        # plotly.js from its CDN: a 4.6 MB copy beside every committed report would bloat the repository
        figure.write_html(folder / f"{stem}.html", include_plotlyjs="cdn")
        files.append(f"{stem}.html")
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        from matplotlib import pyplot
        from optuna.visualization import matplotlib as optuna_matplotlib

        axes = getattr(optuna_matplotlib, function)(study, **kwargs)
        figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
        if caveat:  # above the axes' own (left-aligned) title
            figure.suptitle(caveat, y=1.02, color="firebrick")
        figure.savefig(folder / f"{stem}.png", dpi=110, bbox_inches="tight")
        pyplot.close(figure)
        files.append(f"{stem}.png")
    return files


def study_plots(study: optuna.Study) -> list[Plot]:
    """Optimisation history and parameter importances (per objective), and the Pareto front for several."""
    objectives = objectives_of(study)
    if len(objectives) == 1:
        name = objectives[0]
        return [
            ("optimisation history", "optimization_history", "plot_optimization_history", {"target_name": name}),
            ("parameter importances", "param_importances", "plot_param_importances", {"target_name": name}),
        ]
    plots: list[Plot] = []
    for index, name in enumerate(objectives):
        stem = name.replace("@", "")
        # The importance evaluator (PED-ANOVA) takes lower targets as better: maximised objectives are turned around.
        sign = -1.0 if study.directions[index] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        history = {"target": lambda t, i=index: t.values[i], "target_name": name}
        importances = {"target": lambda t, i=index, s=sign: s * t.values[i], "target_name": name}
        plots.append(
            (f"optimisation history, {name}", f"optimization_history_{stem}", "plot_optimization_history", history)
        )
        plots.append(
            (f"parameter importances, {name}", f"param_importances_{stem}", "plot_param_importances", importances)
        )
    plots.append(("Pareto front", "pareto_front", "plot_pareto_front", {"target_names": objectives}))
    return plots


def write_plots(study: optuna.Study, folder: Path) -> list[tuple[str, list[str] | str]]:
    """The plots of ``study`` in ``folder``: (title, files written, or the reason it was skipped)."""
    written: list[tuple[str, list[str] | str]] = []
    for title, stem, function, kwargs in study_plots(study):
        caveat = importance_caveat(study) if function == "plot_param_importances" else None
        title = f"{title} ({caveat})" if caveat else title
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the matplotlib module
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
                warnings.filterwarnings("ignore", message="The number of trials is too small to compute importances")
                written.append((title, _save(study, folder, stem, function, kwargs, caveat)))
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            written.append((title, f"skipped: {error}"))
    return written


def plot_lines(plots: list[tuple[str, list[str] | str]]) -> list[str]:
    """Markdown: a link to each plot's files, and the PNG shown inline."""
    lines = []
    for title, files in plots:
        if isinstance(files, str):
            lines.append(f"- {title}: {files}")
            continue
        lines.append(f"- {title}: " + ", ".join(f"[{file}]({file})" for file in files))
        lines += [f"\n  ![{title}]({file})\n" for file in files if file.endswith(".png")]
    return lines


# -- report.md ---------------------------------------------------------------------------------------------------


def trial_table(trials: list[FrozenTrial], objectives: list[str]) -> list[str]:
    """Markdown rows: validation objective(s), the same metrics on test (and on the candidate set), the time of the
    trial's run (over all its attempts, when a retry resumed it) and its device, params."""
    candidates = any(trial.user_attrs.get("candidate_result") for trial in trials)
    header = ["trial", *(f"valid {name}" for name in objectives), *(f"test {name}" for name in objectives)]
    header += [f"cand. test {name}" for name in objectives] if candidates else []
    header += ["time (s)", "device", "parameters"]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for trial in trials:
        test, candidate = trial.user_attrs.get("test_result"), trial.user_attrs.get("candidate_result")
        cells = [str(trial.number), *(f"{value:.4f}" for value in trial.values or [])]
        cells += [_metric(test, name) for name in objectives]
        cells += [_metric(candidate, name) for name in objectives] if candidates else []
        cells += [_run_seconds(trial), trial.user_attrs.get("device", "-"), _params(trial)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _run_seconds(trial: FrozenTrial) -> str:
    """The run's wall time, which a retry carries over from its earlier attempts; else the trial's own duration."""
    if "wall_time_s" in trial.user_attrs:
        return f"{trial.user_attrs['wall_time_s']:.0f}"
    return f"{trial.duration.total_seconds():.0f}" if trial.duration else "-"


def write_report(study: optuna.Study, folder: Path) -> Path:
    """``<folder>/report.md`` and the plots beside it; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    attrs, objectives = study.user_attrs, objectives_of(study)
    directions = [direction.name.lower() for direction in study.directions]
    ranked = ranked_trials(study)
    lines = [
        f"# Optuna study {study.study_name}: {attrs.get('model', '?')} on {attrs.get('dataset', '?')}",
        "",
        "Objective(s), on validation: "
        + ", ".join(f"{name} ({d})" for name, d in zip(objectives, directions, strict=False))
        + ". Test metrics are stored with each trial and never used to choose; pick by validation.",
        "",
        f"Trials by state: {state_summary(study)}.",
        "",
        "## Commands",
        "",
        *(f"- `{command}`" for command in attrs.get("commands", [])),
    ]
    protocol = next((t.user_attrs["protocol"] for t in ranked if "protocol" in t.user_attrs), None)
    if protocol:
        lines += ["", f"Protocol: {protocol}"]
    best = study.best_trials if len(objectives) > 1 else ranked[:1]
    title = "Pareto front (best trade-offs)" if len(objectives) > 1 else "Best configuration"
    lines += ["", f"## {title}", ""]
    if not best:
        lines.append("No trial has completed yet.")
    for trial in sorted(best, key=lambda t: t.number):
        values = ", ".join(f"{name} {value:.4f}" for name, value in zip(objectives, trial.values, strict=False))
        test = ", ".join(f"{name} {_metric(trial.user_attrs.get('test_result'), name)}" for name in objectives)
        lines += [f"Trial {trial.number}: valid {values}; test {test}.", ""]
        if "command" in trial.user_attrs:
            lines += ["```bash", trial.user_attrs["command"], "```", ""]
    lines += [f"## Top trials ({min(TOP_TRIALS, len(ranked))} of {len(ranked)} complete)", ""]
    lines += trial_table(ranked[:TOP_TRIALS], objectives)
    lines += ["", "## Plots", ""]
    lines += plot_lines(write_plots(study, folder))
    report = folder / "report.md"
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(report)  # several processes may finish the same study at once
    return report


# -- --compare -------------------------------------------------------------------------------------------------------


def first_finished(study: optuna.Study, budget: int) -> list[FrozenTrial]:
    """The study's complete trials among its first ``budget`` finished ones (in order of completion)."""
    finished = sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.datetime_complete)
    return [trial for trial in finished[:budget] if trial.state == TrialState.COMPLETE]


def best_within(study: optuna.Study, budget: int) -> FrozenTrial | None:
    """The best complete trial among the study's first ``budget`` finished trials (in order of completion)."""
    complete = first_finished(study, budget)
    if not complete:
        return None
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    return min(complete, key=lambda t: sign * t.values[0])


def pareto_within(study: optuna.Study, budget: int) -> list[FrozenTrial]:
    """The Pareto front of the study's first ``budget`` finished trials, by trial number: Optuna's own front
    (``best_trials``) of an in-memory study holding just those trials."""
    subset = optuna.create_study(directions=study.directions)
    subset.add_trials(first_finished(study, budget))
    return sorted(subset.best_trials, key=lambda t: t.number)


def compare(studies: list[optuna.Study], figure: Path) -> str:
    """A markdown comparison of studies under one trial budget (the first N finished trials of each, N the smallest
    study's count): with one objective, each study's best validation score and its test score; with several, each
    study's Pareto front, whose first two objectives are also drawn together in ``figure`` (PNG)."""
    objectives = {tuple(objectives_of(study)) for study in studies}
    if len(objectives) > 1:
        raise UsageError(f"the studies optimise different objectives: {sorted(objectives)}")
    names = list(objectives.pop())
    budget = min(len(study.get_trials(deepcopy=False, states=FINISHED)) for study in studies)
    if len(names) == 1:
        return _compare_best(studies, names[0], budget)
    fronts = {study.study_name: pareto_within(study, budget) for study in studies}
    lines = [
        f"# Pareto fronts compared on validation {' and '.join(names)}, first {budget} finished trials each",
        "",
        "Each study's non-dominated trials on validation; test metrics are stored with each trial and never chose.",
    ]
    for study in studies:
        front, attrs = fronts[study.study_name], study.user_attrs
        title = f"{study.study_name}: {attrs.get('model', '?')} on {attrs.get('dataset', '?')}"
        lines += ["", f"## {title}, {len(front)} trials on the front", ""]
        lines += trial_table(front, names) if front else ["No trial has completed within the budget."]
    lines += ["", f"![Pareto fronts]({figure.name})"] if draw_fronts(fronts, names, figure) else []
    return "\n".join(lines) + "\n"


def draw_fronts(fronts: dict[str, list[FrozenTrial]], objectives: list[str], path: Path) -> bool:
    """Every study's front on the first two objectives in one figure (Optuna plots one study at a time); False
    when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4.5))
    for name, front in fronts.items():
        points = sorted((trial.values[0], trial.values[1]) for trial in front)
        if points:
            axes.step(*zip(*points, strict=True), where="post", marker="o", label=name)
    axes.set_xlabel(f"valid {objectives[0]}")
    axes.set_ylabel(f"valid {objectives[1]}")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    pyplot.close(figure)
    return True


def _compare_best(studies: list[optuna.Study], objective: str, budget: int) -> str:
    lines = [
        f"# Studies compared on validation {objective}, first {budget} finished trials each",
        "",
        f"| study | model | dataset | finished trials | best valid {objective} | its test {objective} | trial |",
        "|---|---|---|---|---|---|---|",
    ]
    for study in studies:
        best = best_within(study, budget)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        valid = f"{best.values[0]:.4f}" if best else "-"
        test = _metric(best.user_attrs.get("test_result"), objective) if best else "-"
        lines.append(
            f"| {study.study_name} | {study.user_attrs.get('model', '?')} | {study.user_attrs.get('dataset', '?')} | "
            f"{finished} | {valid} | {test} | {best.number if best else '-'} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="the study to report on")
    which.add_argument("--compare", nargs="+", metavar="STUDY", help="several studies side by side")
    parser.add_argument("--storage", help="RDB URL or journal file path (default: <out>/<study>/journal.log)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: studies/; committed studies in "
        "results/tuning are read from there and reported here unless --out results/tuning)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.study:
            study = load_study(args.study, args.storage, args.out)
            print(f"report: {write_report(study, args.out / args.study)}")
            return 0
        if len(args.compare) < 2:
            raise UsageError("--compare needs at least two studies")
        out = args.out / f"compare_{'_vs_'.join(args.compare)}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        table = compare([load_study(name, args.storage, args.out) for name in args.compare], out.with_suffix(".png"))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    out.write_text(table)
    print(table + f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
