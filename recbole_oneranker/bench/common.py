"""Shared pieces of the benchmarks: bench configs, data preparation, resumable result rows, confidence intervals."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from scipy import stats

from recbole_oneranker.config import EMBEDDED_DATASET, package_defaults
from recbole_oneranker.data.converters import convert_dataset
from recbole_oneranker.data.paths import raw_dataset_dir
from recbole_oneranker.resources import resource_dir

# The repository root: the benchmarks run from it, and results/, dataset/ and the commands they record are relative
# to it (an installed package has no repository of its own to point at).
REPO = Path.cwd()
CONFIG_DIR = resource_dir("bench/configs")
DEFAULT_DATA_PATH = Path("dataset")  # converted datasets, RecBole's default data_path
# Datasets the benchmarks convert on first use: name -> (converter, raw folder under the shared data).
CONVERTIBLE = {
    "beauty": ("amazon-s3rec", "amazon-s3rec"),
    "taobao": ("taobao-userbehavior", "taobao-userbehavior-subset"),
    "obd": ("obd", "obd-small"),
}


def load_bench_config(dataset: str, path: Path | None = None) -> dict[str, Any]:
    """``bench/configs/<dataset>.yaml``: ``common`` settings, named ``rows`` (each a model plus overrides) and an
    optional ``baseline`` row the others are compared with, user by user."""
    path = path or CONFIG_DIR / f"{dataset}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise SystemExit(f"error: no bench config {path} (available: {available})")
    config = yaml.safe_load(path.read_text())
    for label, row in config["rows"].items():
        if "model" not in row:
            raise SystemExit(f"error: row '{label}' of {path} names no model")
    if config.get("baseline") and config["baseline"] not in config["rows"]:
        raise SystemExit(f"error: baseline '{config['baseline']}' of {path} is not one of its rows")
    return config


def ensure_dataset(dataset: str, data_path: Path) -> Path:
    """Convert ``dataset`` from the shared raw data into ``data_path`` unless it is there (or embedded)."""
    if dataset == EMBEDDED_DATASET or (data_path / dataset / f"{dataset}.inter").is_file():
        return data_path
    if dataset not in CONVERTIBLE:
        raise SystemExit(f"error: dataset '{dataset}' not found under {data_path} and no converter is known for it")
    converter, folder = CONVERTIBLE[dataset]
    if not raw_dataset_dir(folder).is_dir():
        raise SystemExit(f"error: raw data for '{dataset}' not found at {raw_dataset_dir(folder)}")
    print(f"converting {dataset} from {raw_dataset_dir(folder)} into {data_path} ...", flush=True)
    convert_dataset(converter, out=data_path, progress=False)
    return data_path


def row_settings(bench_config: dict[str, Any], label: str, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model of row ``label`` and its full config dict (common < row < command-line extras)."""
    row = dict(bench_config["rows"][label])
    model = row.pop("model")
    return model, {**bench_config.get("common", {}), **row, **extra}


def _shell_word(arg: str) -> str:
    """``arg`` quoted for a POSIX shell, readably: double quotes around Python literals such as lists."""
    if shlex.quote(arg) == arg or any(char in arg for char in '"$`\\!'):
        return shlex.quote(arg)
    return f'"{arg}"'


def run_command(model: str, dataset: str, settings: dict[str, Any]) -> str:
    """The ``run_recbole`` command that reproduces one row by itself."""
    args = [f"--model={model}", f"--dataset={dataset}"]
    args += [f"--{key}={value if isinstance(value, str) else repr(value)}" for key, value in settings.items()]
    return "run_recbole " + " ".join(_shell_word(arg) for arg in args)


# Keys that decide how a run is kept, shown or how fast it goes, not what it computes: left out of a row's identity,
# so adding one to the defaults does not make every row stale. (``threads`` changes the order floats are summed in,
# as the machine does, which is not in the identity either.) (run_id and log_dir are of the kind too, but stay in:
# they were part of every identity made so far.)
RESULT_NEUTRAL_KEYS = frozenset({"resume_training", "length_buckets_on_gpu", "verbose", "threads"})
# Keys added to the defaults after rows were made, each with the value that does what the code did before it
# existed: a row run with that value is the row it was, so the key stays out of its identity; any other value
# (a row's setting, or a later default) enters it.
UNCHANGED_BEHAVIOUR: dict[str, Any] = {
    "history_negatives": False, "repeat_bias": False, "compile_model": False, "candidate_sampling": "uniform",
    "sid_scoring": "additive", "tie_code_embeddings": False, "item_feature_fields": [],
    "history_item_features": True, "candidate_item_features": True, "candidate_history_features": False,
    "candidate_id_dropout": 0.0, "history_id_dropout": 0.0, "history_unknown_items": True, "generation": "item",
    "item_id_embeddings": True, "repeat_explore": False, "stage": "train", "from_checkpoint": None,
    # the policy-gradient methods' keys (properties/align.yaml): DPO and IPA rows never read them
    "align_clip": 0.2, "ecpo_early_clip": 0.1, "hepo_gamma": 1.0, "hepo_lambda": 0.95, "hepo_process_weights": [0.1],
    "hepo_level_weights": [1.0], "hepo_value_weight": 0.5, "hepo_critic_warmup": 0, "hepo_critic_learning_rate": 0.001,
}  # fmt: skip
# Keys one alignment method alone reads (by prefix -> the method): in a row's identity only when the row runs it, so a
# new default of HEPO's makes its rows stale, not the DPO, IPA or ECPO rows.
METHOD_KEY_PREFIXES = {"hepo_": "hepo", "ecpo_": "ecpo"}


# The same, for keys one model's yaml gained while another model had them all along (with their value in its rows'
# identities): OneRanker's SID-generation and trunk keys are GPR's.
MODEL_UNCHANGED_BEHAVIOUR: dict[str, dict[str, Any]] = {
    "OneRanker": {
        "sid_file": None, "mtp_heads": 4, "num_thinking_tokens": 4, "attention": "silu", "token_type_ffn": False,
        "bidirectional_prefix": False,
    },
}  # fmt: skip


def _in_identity(model: str, key: str, value: Any, method: str | None) -> bool:
    """Whether a setting is part of a row's identity: not the seed (rows of one config differ by it), not a
    result-neutral key, not another alignment method's key, not a key at the value that keeps the behaviour from
    before it existed."""
    if key == "seed" or key in RESULT_NEUTRAL_KEYS:
        return False
    if any(key.startswith(prefix) and method != owner for prefix, owner in METHOD_KEY_PREFIXES.items()):
        return False
    unchanged = {**UNCHANGED_BEHAVIOUR, **MODEL_UNCHANGED_BEHAVIOUR.get(model, {})}
    return not (key in unchanged and unchanged[key] == value)


def config_hash(label: str, model: str, dataset: str, settings: dict[str, Any]) -> str:
    """Identity of a row's configuration, seed aside: its settings over the package defaults, so rows made before
    a bench config or a default they run on changed no longer match (a default a row overrides does not count)."""
    merged = {**package_defaults(model, dataset), **settings}
    method = merged.get("align_method")
    effective = {key: value for key, value in merged.items() if _in_identity(model, key, value, method)}
    return hashlib.sha1(json.dumps([label, model, effective], sort_keys=True).encode()).hexdigest()[:12]


def row_key(label: str, model: str, dataset: str, settings: dict[str, Any]) -> str:
    """Identity of a result row: a re-run with the same label, model, defaults and settings (seed included) is
    skipped."""
    return f"{label}-seed{settings.get('seed')}-{config_hash(label, model, dataset, settings)}"


def config_hashes(bench_config: dict[str, Any], dataset: str, extra: dict[str, Any]) -> dict[str, str]:
    """Label -> :func:`config_hash` of every row of ``bench_config``, run on ``dataset`` with ``extra`` settings."""
    return {
        label: config_hash(label, model, dataset, settings)
        for label in bench_config["rows"]
        for model, settings in [row_settings(bench_config, label, extra)]
    }


def code_version() -> str:
    """The repository's commit, ``-dirty`` when tracked files outside results/ have uncommitted changes.

    Results (tables, tuning journals) change on disk while benchmarks run; they are not code, so they do not make a
    row's code dirty. Outside git (e.g. a copy of the working tree sent to another machine),
    ``RECBOLE_ONERANKER_COMMIT`` names it (a full hash is shortened to git's 12 characters, as the other rows
    have it); without that, 'unknown'.
    """
    if "RECBOLE_ONERANKER_COMMIT" in os.environ:
        given = os.environ["RECBOLE_ONERANKER_COMMIT"]
        return given[:12] if re.fullmatch(r"[0-9a-f]{13,40}", given) else given
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        code_changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if code_changes else "")


def run_worker(module: str, argv: list[str], timeout: float | None = None) -> tuple[dict[str, Any] | None, str]:
    """Run ``python -m module *argv`` (a benchmark's ``--worker`` mode) in its own process, so that its peak memory
    is its own: ``(the JSON it printed after RESULT, '')``, or ``(None, why it failed)``."""
    try:
        worker = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"over the {timeout:g} s limit"
    result_lines = [line for line in worker.stdout.splitlines() if line.startswith("RESULT ")]
    if worker.returncode != 0 or not result_lines:
        return None, f"exit status {worker.returncode}\n{worker.stdout[-2000:]}\n{worker.stderr[-4000:]}"
    return json.loads(result_lines[-1][len("RESULT ") :]), ""


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()


class ResultTable:
    """Rows of one benchmark in a CSV file, appended (and flushed) as each row finishes.

    Several benchmark processes may share one file (e.g. a slow baseline on one core, the models on the other):
    each append re-reads the file under an exclusive lock, so no process overwrites rows another one wrote.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as file:
            return list(csv.DictReader(file))

    def row(self, key: str) -> dict[str, Any] | None:
        """The row of ``key``, or None, as the file is now (another process may have finished it meanwhile)."""
        self.rows = self._read()
        return next((row for row in self.rows if row["key"] == key), None)

    def has(self, key: str) -> bool:
        return self.row(key) is not None

    def append(self, row: dict[str, Any]) -> None:
        """Add ``row``, or put it in the place of the row with its key (a row run again)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            rows = self._read()
            if any(old["key"] == row["key"] for old in rows):
                self.rows = [dict(row) if old["key"] == row["key"] else old for old in rows]
            else:
                self.rows = [*rows, dict(row)]
            fields = list(dict.fromkeys(field for existing in self.rows for field in existing))
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows)
            tmp.replace(self.path)


def current_rows(table: ResultTable, hashes: dict[str, str]) -> list[dict[str, Any]]:
    """The rows made with the bench config as it is now (``hashes``: label -> config hash); stale rows stay in
    the CSV but leave the report."""
    return [row for row in table.rows if hashes.get(row["label"]) == row.get("config_hash")]


class ConfiguredRows(NamedTuple):
    """A results table's rows made under its bench config as it is now."""

    config: dict[str, Any]  # the bench config
    dataset: str
    extra: dict[str, Any]  # the settings quality.py adds to every row (a data_path), part of every row's hash
    rows: list[dict[str, Any]]


def configured_rows(
    results_dir: Path, name: str, config_path: Path | None = None, data_path: Path | str = DEFAULT_DATA_PATH
) -> ConfiguredRows:
    """The current rows (:func:`current_rows`) of ``<results_dir>/<name>.csv`` under its bench config
    (``bench/configs/<name>.yaml``, or ``config_path``), hashed with the ``data_path`` quality.py gives a dataset
    outside the recbole wheel, so that the rows it wrote match."""
    bench_config = load_bench_config(name, config_path)
    dataset = bench_config.get("dataset", name)
    extra = {} if dataset == EMBEDDED_DATASET else {"data_path": str(data_path)}
    rows = current_rows(ResultTable(results_dir / f"{name}.csv"), config_hashes(bench_config, dataset, extra))
    return ConfiguredRows(bench_config, dataset, extra, rows)


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-interval over seeds (0 for a single value)."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return float(array.mean()), 0.0
    half = stats.t.ppf((1 + confidence) / 2, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array))
    return float(array.mean()), float(half)


def bootstrap_ci(per_user: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``per_user`` values, resampling users with replacement.

    ``scipy.stats.bootstrap`` draws the same resamples as the hand-written version that made the published tables
    (``default_rng(seed).integers``) and takes the same percentiles; its means sum in another order, so interval
    ends can differ in the 17th digit, far below the 4 digits a table shows.
    """
    result = stats.bootstrap(
        (per_user,), np.mean, n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed)
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def per_user_mean(users: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each user's value averaged over runs whose test users come in different orders: ``(user ids, means)``."""
    ids, inverse = np.unique(np.concatenate(users), return_inverse=True)
    sums = np.bincount(inverse, weights=np.concatenate(values), minlength=len(ids))
    return ids, sums / np.bincount(inverse, minlength=len(ids))


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-user differences ``a - b`` over the users both have (each a ``(user ids, values)`` pair)."""
    _, in_a, in_b = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return a[1][in_a] - b[1][in_b]
