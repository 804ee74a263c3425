"""MLflow tracking: a run's results as MLflow runs, after the fact (`cvmf-ray export`) and live (`cvmf-ray grid
--mlflow`), both through `Tracker.sync`.

Ray's MLflowLoggerCallback makes one MLflow run per Tune trial, and a trial here runs a batch of cells, so the
driver logs instead: one MLflow run per row of the results table (an evaluated model), nested under one parent
run per grid, and a tuning study's trials under a run per study. Identities are tags, so exports and a live grid
meet in the same runs: every run carries `cvmf_ray.grid` (the grid's digest) and `cvmf_ray.key` (a row's cell
key; `grid` on the parent). `sync` reads what MLflow holds of the grid in one search and sends only what differs,
in one `log_batch` per run (the client splits it at the API's limits), from a pool of threads: an export waits on
requests, not bytes. docs/user-guide.md#mlflow lists what each run holds.

mlflow is an optional extra: it is imported only here, and only when --mlflow is given.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

from cvmf_ray.errors import UsageError, first_line
from cvmf_ray.schema import IDENTITY_COLUMNS, NOT_APPLICABLE, OWN_COLUMNS, RUN_METADATA
from cvmf_ray.store import RunStore, json_bytes

INSTALL = "pip install 'cvmf-ray[mlflow]'"
DEFAULT_EXPERIMENT = "cvmf-ray"  # unless MLFLOW_EXPERIMENT_NAME or --experiment names another
GRID_TAG, KEY_TAG, STATUS_TAG, ERROR_TAG = "cvmf_ray.grid", "cvmf_ray.key", "cvmf_ray.status", "cvmf_ray.error"
PARENT_TAG = "mlflow.parentRunId"  # what makes a run nested in MLflow's UI
GRID_KEY = "grid"  # the parent run's cvmf_ray.key
PARAMS = [c for c in IDENTITY_COLUMNS if c not in ("key", "parent_key", "status", "error")]  # the rest are tags
RUN_STATUS = {"ok": "FINISHED", "failed": "FAILED"}  # pending (never ran) and not_applicable (no cells): KILLED
MAX_ERROR = 8000  # MLflow's limit on a tag's value: a longer error would be stored cut, and differ at every export
PROBE_TIMEOUT_S = 5.0
THREADS = 8  # requests in flight during a sync
SEARCH_PAGE = 1000  # runs a search request returns: 10,000 runs with their data in one took a sqlite server > 30 s
CLIENT_ENVIRONMENT = {  # MLflow's own settings, unless the user set them
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # its default (7, backoff 2 s) waits minutes on a server that died
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # else every finished run prints two lines and is read back
}


def check(uri: str) -> None:
    """One line (exit 2) before anything runs: mlflow is not installed, or `uri` is no tracking server's."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError(f"--mlflow needs MLflow, which is not installed: {INSTALL} (the mlflow extra)") from None
    parsed = urlparse(uri)
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
        raise UsageError(f"--mlflow {uri!r} is not a tracking server's URI: give http(s)://HOST[:PORT] of an "
                         "`mlflow server`")  # fmt: skip


def default_experiment() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@dataclass
class Entry:
    """What one MLflow run should hold."""

    key: str  # its identity within the grid (cvmf_ray.key)
    name: str
    status: str  # MLflow's run status
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifact: bytes | None = None  # evaluation.json


@dataclass
class Logged:
    """What MLflow holds of one run: enough to send only what differs."""

    run_id: str
    artifact_uri: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def row_entry(row: dict) -> Entry:
    """A row of the results table, or a live row's own columns (the same names): identity and resolved
    hyperparameters as params (`method.NAME`), every numeric column as a metric, key and status as tags, and
    the row's evaluations/KEY.json, byte for byte, as its artifact."""
    params = {name: _text(row[name]) for name in PARAMS if row.get(name) is not None}
    hyper = json.loads(row["method_params"]) if row.get("method_params") else {}
    params.update({f"method.{name}": _text(value) for name, value in hyper.items() if name not in PARAMS})
    tags = {KEY_TAG: row["key"], STATUS_TAG: row["status"]}
    if row.get("parent_key"):
        tags["cvmf_ray.parent_key"] = row["parent_key"]
    if row.get("error"):
        tags[ERROR_TAG] = row["error"][:MAX_ERROR]
    forget = f"class {row['forget_class']}" if row.get("forget_class") is not None else (
        f"{row.get('forget_fraction') or 0:.0%} random")  # fmt: skip
    name = [row["method"], row["quant"], f"seed {row['seed']}", f"forget {forget}"]
    if row.get("unlearn_bn") == "frozen":
        name.append("BN frozen")
    if row.get("bn_reestimate") not in (None, "none"):
        name.append(f"BN re-est. {row['bn_reestimate']}")
    return Entry(
        key=row["key"],
        name=" · ".join(name),
        status=RUN_STATUS.get(row["status"], "KILLED"),
        params=params,
        metrics=_metrics(row, IDENTITY_COLUMNS),
        tags=tags,
        artifact=json_bytes({name: row.get(name) for name in OWN_COLUMNS}) if row["status"] == "ok" else None,
    )


def trial_entry(study_key: str, trial: dict) -> Entry:
    """A row of tuning.parquet: numeric columns as metrics, the others as params."""
    key = f"{study_key}/trial/{trial['trial']}"
    skip = ("study", "trial", "status")
    return Entry(
        key=key,
        name=f"{trial['study']} trial {trial['trial']}",
        status=RUN_STATUS.get(trial.get("status"), "KILLED"),
        params={k: _text(v) for k, v in trial.items() if k not in skip and v is not None and not _number(v)},
        metrics=_metrics(trial, skip),
        tags={KEY_TAG: key, STATUS_TAG: str(trial.get("status"))},
    )


def _metrics(row: dict, skip) -> dict[str, float]:
    return {name: float(value) for name, value in row.items() if name not in skip and _number(value)}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def grid_status(statuses) -> str:
    """The parent run's status: FAILED if a row failed, KILLED if one never ran, else FINISHED."""
    found = set(statuses) - {NOT_APPLICABLE}
    return "FAILED" if "failed" in found else "KILLED" if found - {"ok"} else "FINISHED"


@contextlib.contextmanager
def refusals(uri: str):
    """What the tracker answers instead of doing (an error status, a dropped connection) as one line."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as err:
        raise UsageError(f"MLflow at {uri!r} refused: {first_line(err)[:300]}") from None


class Tracker:
    """One grid's runs in one experiment of one tracking server."""

    def __init__(self, uri: str, experiment: str, digest: str, store: RunStore) -> None:
        """UsageError when the server does not answer (at once, instead of MLflow's retries) or refuses."""
        reason = unreachable(uri)
        if reason:
            raise UsageError(f"MLflow tracking server {uri!r} is not reachable ({reason}): start it "
                             "(mlflow server --backend-store-uri sqlite:///mlflow.db) or check --mlflow")  # fmt: skip
        for name, value in CLIENT_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        self.uri, self.digest, self.client = uri, digest, MlflowClient(uri)
        with refusals(uri):
            self.experiment_id = self._experiment(experiment)
            self.logged = self._search()
            where = store.display()
            parent = Entry(GRID_KEY, where.rstrip("/").rsplit("/", 1)[-1], "RUNNING",
                           tags={KEY_TAG: GRID_KEY, "cvmf_ray.run": where})  # fmt: skip
            if GRID_KEY not in self.logged:
                self._send(parent, None)
        self.parent_id = self.logged[GRID_KEY].run_id

    def _experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name)
        if experiment.lifecycle_stage != "active":
            raise UsageError(f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore) or "
                             "give another --experiment / MLFLOW_EXPERIMENT_NAME")  # fmt: skip
        return experiment.experiment_id

    def _search(self) -> dict[str, Logged]:
        """Every run of this grid in the experiment, by cvmf_ray.key."""
        found, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`{GRID_TAG}` = '{self.digest}'",
                                           max_results=SEARCH_PAGE, page_token=token)  # fmt: skip
            for run in page:
                info, data = run.info, run.data
                logged = Logged(info.run_id, info.artifact_uri, info.status, data.params, data.metrics, data.tags)
                found[data.tags.get(KEY_TAG)] = logged
            token = page.token
            if not token:
                return found

    def sync(self, entries: list[Entry], parent: str | None = None) -> Counter:
        """Make MLflow hold `entries` as runs nested under `parent` (default: the grid's run). Returns how many
        runs were new, updated and unchanged."""
        parent = parent or self.parent_id
        if len(entries) == 1:  # a live row or a study's run: no pool of threads for one request chain
            return Counter([self._send(entries[0], parent)])
        with ThreadPoolExecutor(THREADS) as pool:
            return Counter(pool.map(lambda entry: self._send(entry, parent), entries))

    def _send(self, entry: Entry, parent: str | None) -> str:
        """Create the run or send what it lacks: metrics, params and tags in one log_batch, the artifact until the
        run is FINISHED (its status is set last, so an export that died half-way sends it again)."""
        from mlflow.entities import Metric, Param, RunTag

        logged, outcome = self.logged.get(entry.key), "updated"
        if logged is None:
            tags = {**entry.tags, GRID_TAG: self.digest, **({PARENT_TAG: parent} if parent else {})}
            run = self.client.create_run(self.experiment_id, run_name=entry.name, tags=tags)
            logged, outcome = Logged(run.info.run_id, run.info.artifact_uri, "RUNNING", {}, {}, tags), "new"
        params = {k: v for k, v in entry.params.items() if k not in logged.params}  # a param never changes
        metrics = {k: v for k, v in entry.metrics.items() if logged.metrics.get(k) != v}
        tags = {k: v for k, v in entry.tags.items() if logged.tags.get(k) != v}
        now = int(time.time() * 1000)
        self.client.log_batch(logged.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                              params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])  # fmt: skip
        stale_error = ERROR_TAG in logged.tags and ERROR_TAG not in entry.tags
        if stale_error:
            self.client.delete_tag(logged.run_id, ERROR_TAG)
        if entry.artifact is not None and logged.status != "FINISHED":
            self.upload(logged.artifact_uri, {"evaluation.json": entry.artifact})
        if entry.status != logged.status and entry.status != "RUNNING":
            self.client.set_terminated(logged.run_id, entry.status)
        if outcome != "new" and not (params or metrics or tags or stale_error or entry.status != logged.status):
            outcome = "unchanged"
        kept = {k: v for k, v in {**logged.tags, **tags}.items() if k != ERROR_TAG or not stale_error}
        self.logged[entry.key] = Logged(logged.run_id, logged.artifact_uri, entry.status,
                                        {**logged.params, **params}, {**logged.metrics, **metrics}, kept)  # fmt: skip
        return outcome

    def upload(self, artifact_uri: str, files: dict[str, bytes]) -> None:
        """Files (artifact path -> bytes) into a run's artifacts, straight to its artifact store: MLflow's own
        log_artifact reads the run back first, a request per file."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
        with tempfile.TemporaryDirectory() as folder:
            for name, data in files.items():
                path = Path(folder, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                repository.log_artifact(str(path), os.path.dirname(name) or None)

    def finish(self, status: str) -> None:
        """The grid's run ends with its rows' status."""
        if self.logged[GRID_KEY].status != status:
            self.client.set_terminated(self.parent_id, status)
            self.logged[GRID_KEY].status = status


def unreachable(uri: str) -> str | None:
    """Why the server does not answer its /health check within PROBE_TIMEOUT_S; None when it does."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S) as answer:
            return None if answer.status == 200 else f"/health answered {answer.status}"
    except urllib.error.HTTPError as err:
        return f"/health answered {err.code} {err.reason}"
    except (OSError, http.client.HTTPException, ValueError) as err:
        reason = getattr(err, "reason", err)  # URLError wraps the socket's error
        return str(getattr(reason, "strerror", None) or reason)


def export(store: RunStore, table: pa.Table, tuning: pa.Table | None, uri: str, experiment: str | None) -> str:
    """`cvmf-ray export`: every row of `table` (the run's, failed and pending ones included), the run's tuning
    studies (`tuning`, its tuning.parquet), and the report on the grid's run when a row changed. Returns the line
    that says what it did."""
    from cvmf_ray.driver import read_grid

    info = json.loads((table.schema.metadata or {}).get(RUN_METADATA) or "{}")
    digest = info.get("grid_digest") or read_grid(store).digest
    rows = table.to_pylist()
    trials = tuning.to_pylist() if tuning is not None else []
    experiment = experiment or default_experiment()
    tracker = Tracker(uri, experiment, digest, store)
    with refusals(uri):
        counts = tracker.sync([row_entry(row) for row in rows])
        studies = _sync_studies(tracker, trials)
        changed = counts["new"] + counts["updated"] + studies["new"] + studies["updated"]
        stale = changed or not tracker.client.list_artifacts(tracker.parent_id)
    figures = _report(tracker, table, tuning, store.display()) if stale else None
    with refusals(uri):
        tracker.finish(grid_status(row["status"] for row in rows))
    report = "the report unchanged" if figures is None else f"the report and its {figures} figures"
    tuned = f"; tuning trials: {studies['new']} new, {studies['updated']} updated" if trials else ""
    return (f"exported {len(rows)} rows to MLflow experiment {experiment!r} at {uri}: {counts['new']} new, "
            f"{counts['updated']} updated, {counts['unchanged']} unchanged, under run {tracker.parent_id} with "
            f"{report}{tuned}")  # fmt: skip


def _report(tracker: Tracker, table: pa.Table, tuning: pa.Table | None, title: str) -> int:
    """report.html and its figures (PNG) on the grid's run, rendered by `cvmf-ray report`'s code; returns how many
    figures."""
    from cvmf_ray.report import write_report

    with tempfile.TemporaryDirectory() as folder:
        write_report(table, Path(folder), title=title, tuning=tuning)
        names = ["report.html", *(f"figures/{p.name}" for p in sorted(Path(folder, "figures").glob("*.png")))]
        with refusals(tracker.uri):
            tracker.upload(tracker.logged[GRID_KEY].artifact_uri, {n: Path(folder, n).read_bytes() for n in names})
    return len(names) - 1


def _sync_studies(tracker: Tracker, trials: list[dict]) -> Counter:
    """tuning.parquet's trials nested under a run per study (itself under the grid's)."""
    counts = Counter()
    for study in dict.fromkeys(trial["study"] for trial in trials):
        key = f"study/{study}"
        tracker.sync([Entry(key, f"study {study}", "FINISHED", tags={KEY_TAG: key, "cvmf_ray.study": str(study)})])
        counts += tracker.sync([trial_entry(key, t) for t in trials if t["study"] == study], tracker.logged[key].run_id)
    return counts


class LiveLog:
    """`grid --mlflow`: each evaluated model as its evaluate cell finishes, sent from a thread so that Tune's loop
    never waits on the tracker. A tracker that is down or refuses is one warning line, then silence: the grid
    goes on, and a later `cvmf-ray export` sends what is missing (and the columns only the whole table has)."""

    def __init__(self, uri: str, store: RunStore, digest: str, log) -> None:
        self.uri, self.log, self.failure, self.told = uri, log, None, False
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow")
        try:
            self.tracker = Tracker(uri, default_experiment(), digest, store)
        except UsageError as err:
            self.tracker, self.failure = None, str(err)
        self._tell()

    def row(self, row: dict) -> None:
        """A finished evaluate cell's own columns (called in Tune's loop)."""
        self._tell()
        if self.tracker is not None and self.failure is None:
            self.pool.submit(self._send, row)

    def _send(self, row: dict) -> None:
        if self.failure is not None:
            return
        try:
            with refusals(self.uri):
                self.tracker.sync([row_entry(row)])
        except UsageError as err:
            self.failure = str(err)

    def close(self, table: pa.Table | None) -> None:
        """Send what is queued and end the grid's run with the table's status; without a table (the grid was
        interrupted) drop the queue and end it KILLED."""
        self.pool.shutdown(wait=True, cancel_futures=table is None)
        if self.tracker is not None and self.failure is None:
            status = grid_status(table.column("status").to_pylist()) if table is not None else "KILLED"
            try:
                with refusals(self.uri):
                    self.tracker.finish(status)
            except UsageError as err:
                self.failure = str(err)
        self._tell()

    def _tell(self) -> None:
        if self.failure is not None and not self.told:
            self.told = True
            self.log(f"warning: MLflow logging stopped: {self.failure}; the grid goes on, and `cvmf-ray export "
                     "RUN_DIR --mlflow URI` sends what is missing")  # fmt: skip
