"""tuning/search.py and tuning/report.py on the tiny slice: kill and resume, two processes on one journal, one-line
errors, reports. Trials train the real HSTU (1 epoch, width 16) through ``recbole_oneranker.quick_start.run``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from recbole_oneranker.config import Config, known_keys
from recbole_oneranker.tuning import report, search, spaces, storage

REPO = Path(__file__).resolve().parents[1]
TINY_SET = [
    "hidden_size=16", "attention_dim=8", "linear_hidden_dim=8", "n_heads=1", "MAX_ITEM_LIST_LENGTH=20",
    "train_batch_size=256", "eval_batch_size=256", "show_progress=False", "state=ERROR", "load_col=None",
    "cascade_fields=['click','conversion']", "value_field=rating", "metrics=['Hit','NDCG','GMV']", "topk=[5,10]",
]  # fmt: skip
DEADLINE_S = 90


def search_args(data: Path, out: Path, study: str, n_trials: int, *extra: str) -> list[str]:
    return ["--model", "HSTU", "--dataset", "ml-tiny", "--data-path", str(data), "--out", str(out), "--study-name",
            study, "--n-trials", str(n_trials), "--epochs", "1", *extra, "--set", *TINY_SET]  # fmt: skip


def start(args: list[str], log: Path, sleep_at: str | None = None) -> subprocess.Popen:
    """``python tuning/search.py ARGS`` in the background, output to ``log``; ``sleep_at``: the test hook "N:S"."""
    env = {key: value for key, value in os.environ.items() if key != search.SLEEP_ENV}
    if sleep_at:
        env[search.SLEEP_ENV] = sleep_at
    with log.open("w") as file:
        return subprocess.Popen([sys.executable, str(REPO / "tuning" / "search.py"), *args], cwd=log.parent,
                                stdout=file, stderr=subprocess.STDOUT, env=env)  # fmt: skip


def finish(process: subprocess.Popen, log: Path) -> str:
    assert process.wait(timeout=DEADLINE_S) == 0, log.read_text()
    return log.read_text()


def load(out: Path, study: str) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(out / study / "journal.log")))
    return optuna.load_study(study_name=study, storage=storage)


def wait_for_second_trial(process: subprocess.Popen, out: Path, study: str, log: Path) -> None:
    """Until trial 0 is COMPLETE and trial 1 has drawn its parameters (it then sleeps in the test hook)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            trials = load(out, study).trials
        except (KeyError, ValueError, FileNotFoundError):  # the study or its journal is not there yet
            trials = []
        if len(trials) == 2 and trials[0].state == TrialState.COMPLETE and "command" in trials[1].user_attrs:
            return
        time.sleep(0.2)
    raise AssertionError("trial 1 never started:\n" + log.read_text())


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tuning")


@pytest.fixture(scope="module")
def killed_study(out, tiny_data_path) -> dict:
    """A 3-trial study SIGKILLed during trial 1, then re-run with the same command."""
    args = search_args(tiny_data_path, out, "killed", 3, "--seed", "0")
    process = start(args, out / "first.log", sleep_at="1:120")
    wait_for_second_trial(process, out, "killed", out / "first.log")
    before = load(out, "killed").trials[0]
    process.send_signal(signal.SIGKILL)
    process.wait()  # reaped: its pid no longer names a process
    rerun = finish(start(args, out / "rerun.log"), out / "rerun.log")
    return {"before": before, "killed_pid": process.pid, "rerun": rerun}


@pytest.fixture(scope="module")
def terminated_study(out, tiny_data_path) -> dict:
    """A 3-trial study stopped by SIGTERM (what `kill` sends) during trial 1."""
    log = out / "terminated.log"
    process = start(search_args(tiny_data_path, out, "terminated", 3, "--seed", "0"), log, sleep_at="1:120")
    wait_for_second_trial(process, out, "terminated", log)
    process.send_signal(signal.SIGTERM)
    return {"status": process.wait(timeout=DEADLINE_S), "log": log.read_text()}


@pytest.fixture(scope="module")
def parallel_study(out, tiny_data_path) -> list[str]:
    """The same command in two processes at once; whoever runs trial 0 sleeps 3 s so that both get trials."""
    args = search_args(tiny_data_path, out, "parallel", 3)
    processes = [start(args, out / f"worker{i}.log", sleep_at="0:3") for i in range(2)]
    return [finish(process, out / f"worker{i}.log") for i, process in enumerate(processes)]


def test_killed_study_resumes_and_retries_the_killed_trial(out, killed_study):
    trials = load(out, "killed").trials
    before = killed_study["before"]
    # trial 0, finished before the kill, is intact
    assert trials[0].state == TrialState.COMPLETE
    assert (trials[0].params, trials[0].values, trials[0].datetime_complete) == (
        before.params, before.values, before.datetime_complete)  # fmt: skip
    assert trials[0].user_attrs == before.user_attrs and "test_result" in trials[0].user_attrs
    # trial 1, killed while running, is FAILED and its parameters ran again
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["owner"]["pid"] == killed_study["killed_pid"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[1].params
    assert retry[0].user_attrs["run_id"] == trials[1].user_attrs["run_id"]  # it continues the killed run's snapshot
    # the study ends with exactly 3 complete trials, nothing left running
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    assert len(trials) == 4 and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    assert "trial 1: its process died; marked FAIL and queued again" in killed_study["rerun"]
    assert "== study killed: 3 finished of 3 (COMPLETE 3, FAIL 1)" in killed_study["rerun"]
    retry_line = next(line for line in killed_study["rerun"].splitlines() if line.endswith("(retry of 1)"))
    assert re.search(r"\(\d+ s, \d+ s with its earlier attempts\)", retry_line), retry_line
    # each complete trial carries its test metrics and the command that reproduces it; files sit under the study
    for trial in (t for t in trials if t.state == TrialState.COMPLETE):
        assert {"ndcg@10", "gmv@10"} <= set(trial.user_attrs["test_result"])
        assert trial.user_attrs["command"].startswith("run_recbole --model=HSTU --dataset=ml-tiny")
        assert Path(trial.user_attrs["saved_model_file"]).parent == out / "killed" / "checkpoints"
        assert trial.values[0] == trial.user_attrs["best_valid_result"]["ndcg@10"]


def test_sigterm_fails_and_queues_the_running_trial_quietly(out, terminated_study):
    assert terminated_study["status"] == search.INTERRUPTED
    assert "trial 1: interrupted; marked FAIL and queued again" in terminated_study["log"]
    assert "Traceback" not in terminated_study["log"]  # Optuna's warning of the interrupted trial is filtered out
    trials = load(out, "terminated").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].user_attrs["run_id"] == trials[1].user_attrs["run_id"]


def cut_attempt(study: optuna.Study, new_epochs: int) -> optuna.trial.FrozenTrial:
    """Run the next trial (a queued retry first) for ``new_epochs`` validations past its snapshot's, then fail it."""
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    start_epoch = int(trial.user_attrs.get("epochs_at_start", 0))
    for epoch in range(start_epoch + new_epochs):  # a retry re-reports its snapshot's epochs first
        trial.report(0.1, epoch)
    study.tell(trial, state=TrialState.FAIL)
    return study.trials[trial.number]


def test_a_cut_trial_is_retried_while_it_advances_and_given_up_after_three_stalled_attempts():
    study = optuna.create_study(direction="maximize")
    for _ in range(5):  # cut five times (ends of sessions), each time after two new epochs: always queued again
        assert search.requeue(study, cut_attempt(study, new_epochs=2))
    assert study.trials[-1].user_attrs == {"retry_of": 4, "stalled_attempts": 0, "epochs_at_start": 10}
    assert search.requeue(study, cut_attempt(study, new_epochs=0))
    assert search.requeue(study, cut_attempt(study, new_epochs=0))
    assert not search.requeue(study, cut_attempt(study, new_epochs=0))  # a third attempt in a row without progress
    assert not any(t.state == TrialState.WAITING for t in study.trials)


def test_two_processes_share_one_study(out, parallel_study):
    storage = JournalStorage(JournalFileBackend(str(out / "parallel" / "journal.log")))
    assert [study.study_name for study in storage.get_all_studies()] == ["parallel"]
    trials = load(out, "parallel").trials
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3  # the requested total, not one per process
    # a FAIL can only be a surplus trial: both processes started the last trial at the same moment (rare)
    assert all(t.user_attrs.get("surplus") for t in trials if t.state != TrialState.COMPLETE)
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 2  # both processes ran trials


def test_report_and_compare(out, killed_study, parallel_study, capsys, run_device):
    assert report.main(["--study", "killed", "--out", str(out)]) == 0
    text = (out / "killed" / "report.md").read_text()
    assert "# Optuna study killed: HSTU on ml-tiny" in text
    assert "Trials by state: COMPLETE 3, FAIL 1." in text
    assert "python tuning/search.py --model HSTU --dataset ml-tiny" in text
    assert "```bash\nrun_recbole --model=HSTU --dataset=ml-tiny" in text
    assert "| trial | valid ndcg@10 | test ndcg@10 |" in text
    assert f"| {run_device} |" in text  # each trial's device, beside its time
    for stem in ("optimization_history", "param_importances"):
        for plot in (f"{stem}.html", f"{stem}.png"):  # plotly and matplotlib
            assert (out / "killed" / plot).is_file() and f"]({plot})" in text
    assert (out / "killed" / "optimization_history.png").read_bytes().startswith(b"\x89PNG")

    assert report.main(["--compare", "killed", "parallel", "--out", str(out)]) == 0
    table = (out / "compare_killed_vs_parallel.md").read_text()
    assert "first 3 finished trials each" in table
    assert "| killed | HSTU | ml-tiny | 3 |" in table and "| parallel | HSTU | ml-tiny | 3 |" in table


def _two_objective_study(name: str, points: list[tuple[float, float]]) -> optuna.Study:
    study = optuna.create_study(study_name=name, directions=["maximize", "maximize"])
    study.set_user_attr("objectives", ["ndcg@10", "gmv@10"])
    study.set_user_attr("model", name.upper())
    for ndcg, gmv in points:
        test = {"ndcg@10": ndcg / 2, "gmv@10": gmv / 2}
        study.add_trial(optuna.trial.create_trial(values=[ndcg, gmv], user_attrs={"test_result": test}))
    return study


def test_two_objective_studies_are_compared_by_their_fronts_under_one_budget(tmp_path):
    # a: trials 0 and 1 trade off, 2 is dominated by 1; its fourth trial lies beyond b's budget of 3 trials
    a = _two_objective_study("a", [(0.30, 0.10), (0.20, 0.40), (0.10, 0.30), (0.90, 0.90)])
    b = _two_objective_study("b", [(0.25, 0.25), (0.05, 0.05), (0.25, 0.20)])
    assert [t.number for t in report.pareto_within(a, 3)] == [0, 1]
    assert [t.number for t in report.pareto_within(a, 4)] == [3]
    assert [t.number for t in report.pareto_within(b, 3)] == [0]

    table = report.compare([a, b], tmp_path / "fronts.png")
    assert "Pareto fronts compared on validation ndcg@10 and gmv@10, first 3 finished trials each" in table
    assert "## a: A on ?, 2 trials on the front" in table and "## b: B on ?, 1 trials on the front" in table
    assert "| 0 | 0.3000 | 0.1000 | 0.1500 | 0.0500 |" in table  # valid values, then the test values stored
    assert "0.9000" not in table  # beyond the budget
    assert (tmp_path / "fronts.png").read_bytes().startswith(b"\x89PNG") and "![Pareto fronts](fronts.png)" in table


def test_studies_of_different_objectives_are_not_compared(tmp_path):
    single = optuna.create_study(study_name="single", direction="maximize")
    single.set_user_attr("objectives", ["ndcg@10"])
    with pytest.raises(report.UsageError, match="different objectives"):
        report.compare([single, _two_objective_study("a", [(0.1, 0.1)])], tmp_path / "fronts.png")


def test_two_objectives_keep_a_pareto_front_and_plot_it(out, tiny_data_path, capsys):
    args = search_args(tiny_data_path, out, "pareto", 3, "--objectives", "ndcg@10", "gmv@10", "--seed", "0")
    assert search.main(args) == 0
    summary = capsys.readouterr().out
    study = load(out, "pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert isinstance(search.make_sampler(None, 0, multi=True), optuna.samplers.NSGAIISampler)  # the default for two
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:  # both metrics of the epoch chosen on validation, the first objective deciding
        assert trial.values == [trial.user_attrs["best_valid_result"][name] for name in ("ndcg@10", "gmv@10")]
    front = sorted(trial.number for trial in study.best_trials)
    assert front and all(not _dominated(study.trials[n], complete) for n in front)
    assert f"Pareto front ({len(front)} trials):" in summary
    text = (out / "pareto" / "report.md").read_text()
    assert "## Pareto front (best trade-offs)" in text
    for number in front:
        assert f"Trial {number}: valid ndcg@10 " in text and study.trials[number].user_attrs["command"] in text
    assert (out / "pareto" / "pareto_front.png").read_bytes().startswith(b"\x89PNG")
    assert "](pareto_front.html)" in text


def _dominated(trial: optuna.trial.FrozenTrial, others: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether another trial is at least as good on every objective and better on one."""
    return any(
        other.values != trial.values and all(o >= t for o, t in zip(other.values, trial.values, strict=True))
        for other in others
    )


def test_report_gives_a_retry_the_time_of_its_whole_run():
    distributions = {"x": optuna.distributions.FloatDistribution(0, 1)}
    attrs = {"retry_of": 46, "wall_time_s": 4064.2, "device": "cpu"}  # 132 s of its own, the rest before
    retry = optuna.trial.create_trial(value=0.07, params={"x": 0.5}, distributions=distributions, user_attrs=attrs)
    assert "| 4064 | cpu |" in report.trial_table([retry], ["ndcg@10"])[2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "NoSuchModel"], "no search space for model 'NoSuchModel'"),
        (["--spaces-dir", "spaces"], "'learning_rte' is not a config key (did you mean 'learning_rate'"),
        (["--objective", "ndgc@10"], "unknown objective 'ndgc@10'"),
        (["--storage", "postgresql://u:pw@127.0.0.1:1/x"], "cannot open storage postgresql://u@127.0.0.1:1/x: "),
        (["--heartbeat-interval", "5"], "--heartbeat-interval and --grace-period need an RDB --storage"),
        (["--storage", "sqlite:///x.db", "--grace-period", "60"], "grace period (60 s) must exceed the heartbeat"),
        (["--pruner", "median", "--objectives", "ndcg@10", "gmv@10"], "cannot prune multi-objective trials"),
        (["--out", "/proc/nope"], "/proc/nope: cannot write the study there"),  # read-only even for root
    ],
)
def test_mistakes_print_one_line_and_exit_2(tmp_path, tiny_data_path, capsys, extra, message):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "HSTU.yaml").write_text("learning_rte: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
    assert search.main(search_args(tiny_data_path, tmp_path / "out", "bad", 1, *extra)) == 2  # a later --model wins
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out" / "bad" / "journal.log").exists()


def test_workers_of_different_seeds_never_share_a_sampler_seed():
    seeds = {search.worker_seed(seed, trials) for seed in range(4) for trials in range(20)}
    assert len(seeds) == 80  # a sum gave --seed 0 after one trial the seed of --seed 1 after none
    assert search.worker_seed(0, 1) == search.worker_seed(0, 1)


def test_a_worker_creating_a_study_another_has_just_created_joins_it():
    storage = optuna.storages.InMemoryStorage()
    theirs = optuna.create_study(study_name="both", storage=storage, direction="maximize")
    ours = search.new_study(storage, "both", ["maximize"], optuna.pruners.NopPruner())
    assert ours._study_id == theirs._study_id and len(storage.get_all_studies()) == 1


def test_task_order_is_a_categorical_over_the_dataset_task_orders(tiny_data_path):
    space = spaces.load_space("OneRanker", spaces.SPACES_DIR)
    config = Config("OneRanker", "ml-tiny", config_dict={"data_path": str(tiny_data_path), "load_col": None,
                           "cascade_fields": ["click", "conversion"], "value_field": "rating"})  # fmt: skip
    tasks = spaces.dataset_tasks(config)
    assert tasks == ["click", "conversion", "value"]
    distribution = spaces.to_distribution("task_order", space["task_order"], tasks, spaces.SPACES_DIR)
    assert len(distribution.choices) == 6 and "click>conversion>value" in distribution.choices
    assert spaces.params_to_config({"task_order": "value>click>conversion"}, space) == {
        "task_order": ["value", "click", "conversion"]}  # fmt: skip
    for model in ("OneRanker", "HSTU", "SASRec"):
        assert set(spaces.load_space(model, spaces.SPACES_DIR)) <= known_keys()


def test_pruning_reporter_reports_and_prunes():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    callback = search.PruningReporter(trial)
    callback(0, 0.7)  # above the threshold: training goes on
    with pytest.raises(optuna.TrialPruned):
        callback(1, 0.2)
    assert study.trials[0].intermediate_values == {0: 0.7, 1: 0.2}


def test_a_retry_continuing_a_run_reports_its_earlier_epochs_first():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    interrupted = search.PruningReporter(study.ask())
    interrupted(0, 0.3)
    interrupted(1, 0.4)
    retry = search.PruningReporter(study.ask())
    retry.load_state_dict(interrupted.state_dict())  # what the resume snapshot carries
    retry(2, 0.5)
    assert study.trials[1].intermediate_values == {0: 0.3, 1: 0.4, 2: 0.5}


@pytest.mark.parametrize("name", ["median", "hyperband"])
def test_pruners_wait_for_the_warmup_epochs(name):
    study = optuna.create_study(direction="maximize", pruner=search.make_pruner(name, multi=False, warmup_epochs=10))
    for _ in range(6):  # finished trials that scored well at every epoch
        trial = study.ask()
        for epoch in range(30):
            trial.report(1.0, epoch)
        study.tell(trial, 1.0)
    late_starter = study.ask()
    for epoch in range(10):
        late_starter.report(0.0, epoch)
        assert not late_starter.should_prune()  # before the warmup: never judged
    if name == "median":  # (hyperband's first rung depends on the trial's bracket)
        late_starter.report(0.0, 20)
        assert late_starter.should_prune()


def test_a_study_continues_under_other_machine_settings_but_not_other_trial_settings():
    study = optuna.create_study()
    search.check_same_study(study, {"model": "HSTU", "settings": {"epochs": 1, "data_path": "/here"}})
    # Another machine's data path, or a compiled forward: the same trials, run another way.
    search.check_same_study(study, {"model": "HSTU", "settings": {"epochs": 1, "data_path": "/there",
                                                                  "compile_model": True}})  # fmt: skip
    with pytest.raises(search.UsageError, match=r"settings \{'epochs': 1\}.* \{'epochs': 2\}"):
        search.check_same_study(study, {"model": "HSTU", "settings": {"epochs": 2, "data_path": "/here"}})


def test_a_worker_waits_for_the_identity_another_worker_is_still_writing():
    identity = {"model": "HSTU", "dataset": "ml-tiny", "settings": {"epochs": 1}}
    study = optuna.create_study()
    study.set_user_attr("model", "HSTU")  # the creator has written its first key only

    def write_the_rest():
        time.sleep(0.3)
        for key in ("dataset", "settings"):
            study.set_user_attr(key, identity[key])

    creator = threading.Thread(target=write_the_rest)
    creator.start()
    search.check_same_study(study, identity, wait_s=10)
    creator.join()
    assert study.user_attrs == identity  # it waited and wrote nothing of its own


def test_a_partial_identity_is_refused_at_once_on_a_clash_and_after_the_wait_when_it_stays_partial():
    study = optuna.create_study()
    study.set_user_attr("model", "SASRec")
    started = time.monotonic()
    with pytest.raises(search.UsageError, match="was run with model 'SASRec'"):
        search.check_same_study(study, {"model": "HSTU", "dataset": "ml-tiny"}, wait_s=10)
    assert time.monotonic() - started < 5
    with pytest.raises(search.UsageError, match="has no dataset after 0 s"):
        search.check_same_study(study, {"model": "SASRec", "dataset": "ml-tiny"}, wait_s=0.2)


def test_a_refused_rerun_leaves_the_study_untouched(tmp_path, tiny_data_path, capsys):
    journal = tmp_path / "out" / "clash" / "journal.log"
    journal.parent.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(study_name="clash", storage=storage).set_user_attr("model", "SASRec")
    before = journal.read_bytes()
    assert search.main(search_args(tiny_data_path, tmp_path / "out", "clash", 1)) == 2  # an HSTU command
    assert "was run with model 'SASRec'" in capsys.readouterr().err
    assert journal.read_bytes() == before
    assert sorted(path.name for path in journal.parent.iterdir()) == ["journal.log"]


def test_a_committed_study_is_reported_elsewhere_unless_asked(tmp_path, monkeypatch):
    committed = storage.COMMITTED_STUDIES / "OneRanker-ml-100k-ndcg10"
    files_before = {path.name: path.read_bytes() for path in committed.iterdir()}
    studies = tmp_path / "studies"
    monkeypatch.setattr(storage, "DEFAULT_OUT", studies)
    monkeypatch.setattr(report, "DEFAULT_OUT", studies)
    assert report.main(["--study", "OneRanker-ml-100k-ndcg10"]) == 0
    assert {path.name: path.read_bytes() for path in committed.iterdir()} == files_before
    text = (studies / "OneRanker-ml-100k-ndcg10" / "report.md").read_text()
    study = report.load_study("OneRanker-ml-100k-ndcg10", None, studies)  # read from results/tuning
    complete = len(study.get_trials(states=[TrialState.COMPLETE]))
    assert complete < report.MIN_TRIALS_FOR_IMPORTANCES  # else the caveat below would be wrong
    assert f"parameter importances (caveat: from {complete} complete trials" in text
