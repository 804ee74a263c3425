"""One invocation of `cvmf-ray grid`: list the run, run what is unfinished, write the table.

The run's state is one listing of `artifacts/` and `failures/`. The previous `results.parquet` supplies the
rows of cells finished earlier; the cells of this invocation report theirs. Only rows no table holds any more
(a deleted or damaged table, a grid widened back) are read from storage, a file per row. The table and
`evaluations/` always describe the same rows, those of the grid last run: JSON files of cells outside it are
removed (their artifacts stay and are reused if the grid widens again) and missing ones are rewritten.
With nothing to run and a table of this very grid, an invocation lists and exits.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import ray

from cvmf_ray.config import GridConfig
from cvmf_ray.errors import Interrupted, UsageError, first_line
from cvmf_ray.grid import Grid
from cvmf_ray.progress import Progress
from cvmf_ray.results import assemble, evaluation_row, failed_row, rows_from_table, run_info, tuning_row, tuning_table
from cvmf_ray.runner import DagSearcher, RunStopped, Signals, StopSignal, connect, fit
from cvmf_ray.scheduler import BLOCKED, DONE, FAILED, Scheduler
from cvmf_ray.schema import RUN_METADATA
from cvmf_ray.store import CorruptArtifact, RunStore
from cvmf_ray.studies import Studies

READERS = 16  # parallel storage reads when rows must be recovered file by file (latency, not bandwidth)


@dataclass
class Outcome:
    table: pa.Table
    ran: bool  # whether any cell was run in this invocation


def run(config: GridConfig, grid: Grid, store: RunStore, log, verbose: bool = False, stop: StopSignal | None = None,
        on_row=None) -> Outcome:  # fmt: skip
    """`on_row(row)` is told each evaluate cell's own columns as the cell finishes (`grid --mlflow`)."""
    started, stop = time.time(), stop or StopSignal()
    listing = store.listing()
    previous = _previous_table(store, log)
    done = listing.done & grid.cells.keys()
    if len(done) == len(grid.cells) and _describes(previous, grid):
        log(f"run {store.display()}: all {len(grid.cells)} cells are finished; nothing to run")
        return Outcome(previous, ran=False)
    trials = _finished_trials(store, grid, done)
    done -= {key for key in grid.stage_keys("tune") if key in done and key not in trials}  # damaged: run again
    done -= _stale_choices(store, grid, done)
    rows, comparisons = rows_from_table(previous, done) if previous is not None else ({}, {})
    for stage, into in (("evaluate", rows), ("compare", comparisons)):
        missing = [c.key for c in grid.stage(stage) if c.key in done and c.key not in into]
        done -= _recover(store, grid, missing, into, stage)
    done -= _stale_comparisons(grid, done, comparisons)
    scheduler = Scheduler(grid, done)
    before = len(done)
    if scheduler.finished:
        _prepare(store, grid)
        searcher, stopped = None, None
    else:
        searcher, stopped = _run_cells(config, grid, store, scheduler, log, verbose, stop, on_row, trials)
        rows.update(searcher.rows if searcher else {})
        comparisons.update(searcher.comparisons if searcher else {})
        trials.update(searcher.trials if searcher else {})
    if stop.lock_lost:
        stopped.summary = "the driver that holds the run now writes its table"
        raise stopped
    table = _table(config, grid, store, scheduler, listing.failed, rows, comparisons, started)
    _sync_evaluations(store, table)
    store.write_parquet(table, "results.parquet")
    if grid.stage_keys("tune"):
        store.write_parquet(tuning_table(grid, trials, _failures(grid, "tune", store, scheduler, listing.failed)),
                            "tuning.parquet")  # fmt: skip
    else:  # like results.parquet, it describes the grid last run
        store.remove("tuning.parquet")
    if stopped is not None:
        finished = sum(1 for state in scheduler.state.values() if state == DONE)
        stopped.summary = f"{finished} of {len(grid.cells)} cells are finished and kept ({finished - before} new)"
        raise stopped
    return Outcome(table, ran=searcher is not None)


def _stale_comparisons(grid: Grid, done: set[str], comparisons: dict[str, dict]) -> set[str]:
    """Finished compare cells to run again: those that ran while a seed's model or retrain had not finished
    (failed, or not yet run), which has finished since. Their group's columns would leave that seed out."""
    stale = set()
    for cell in (c for c in grid.stage("compare") if c.key in done):
        covered = comparisons.get(cell.key, {}).get("rows", {})
        pairs = [(key, cell.inputs[name.replace("model:", "retrain:")]) for name, key in cell.inputs.items()
                 if name.startswith("model:")]  # fmt: skip
        if any(model in done and retrain in done and model not in covered for model, retrain in pairs):
            stale.add(cell.key)
            comparisons.pop(cell.key, None)
    return stale


def _prepare(store: RunStore, grid: Grid) -> None:
    """The first writes of an invocation, once nothing can refuse it any more."""
    store.remove_stale_temporaries()
    store.write_json(grid.to_json(), "grid.json")


def _run_cells(config, grid, store, scheduler, log, verbose, stop, on_row=None, trials=None
               ) -> tuple[DagSearcher | None, BaseException | None]:  # fmt: skip
    """Start Ray, run every unfinished cell, shut Ray down. Returns the searcher (what the cells reported) and
    why the run stopped early, if it did (a signal, a full disk, a lost lock)."""
    counts = ", ".join(f"{n} {stage}" for stage, n in grid.counts().items() if n)
    log(f"run {store.display()}: {counts} cells; {sum(s != DONE for s in scheduler.state.values())} to run")
    searcher = None
    # the searcher's counts once it exists: they tell running cells from those queued for resources
    progress = Progress(lambda: searcher.counts() if searcher else scheduler.counts(),
                        lambda: (scheduler.cost_done, scheduler.cost_left), verbose, log)  # fmt: skip
    try:
        with Signals.deferring():
            plan = connect(config, verbose)
            Signals.install()  # again: ray.init replaced the SIGTERM handler with its own
            try:
                Signals.raise_received()
                _prepare(store, grid)
                studies = Studies(grid, trials) if grid.stage_keys("tune") else None
                searcher = DagSearcher(scheduler, plan, store, progress, stop, on_row, studies)
                fit(config, grid, store, searcher, plan)
            finally:
                ray.shutdown()
    except (Interrupted, RunStopped) as err:
        return searcher, err
    except SystemError as err:  # a second signal, raised inside Ray's Cython code, arrives wrapped
        if isinstance(err.__context__, Interrupted):
            return searcher, err.__context__
        raise
    finally:
        progress.close()
    return searcher, None


def _previous_table(store: RunStore, log) -> pa.Table | None:
    """The run's results.parquet; None when there is none, or when it is damaged (said once, through `log`)."""
    return _optional_parquet(store, "results.parquet", "rebuilding it from evaluations/ and artifacts/", log)


def _optional_parquet(store: RunStore, name: str, instead: str, log) -> pa.Table | None:
    """A table of the run directory; None when there is none, or when it is damaged (said once, with what happens
    `instead`, through `log`)."""
    if not store.file_exists(name):
        return None
    try:
        return store.read_parquet(name)
    except (OSError, pa.ArrowException) as err:
        log(f"warning: {name} is damaged ({first_line(err)}); {instead}")
        return None


def _describes(table: pa.Table | None, grid: Grid) -> bool:
    """Whether `table` was written for exactly this grid, every row finished."""
    if table is None or RUN_METADATA not in (table.schema.metadata or {}):
        return False
    import json

    info = json.loads(table.schema.metadata[RUN_METADATA])
    return info.get("grid_digest") == grid.digest and set(table.column("status").to_pylist()) == {"ok"}


def _table(config, grid, store, scheduler, failed_before, rows, comparisons, started) -> pa.Table:
    """Every evaluate cell's row: finished (reported, or from an earlier table), failed, or pending."""
    failures = _failures(grid, "evaluate", store, scheduler, failed_before)
    for cell in grid.stage("evaluate"):
        if scheduler.state[cell.key] == DONE and cell.key in rows:
            continue
        failed = cell.key in failures
        rows[cell.key] = failed_row(cell, "failed" if failed else "pending", failures.get(cell.key))
    info = run_info(config, grid, scheduler.counts(), started, time.time())
    return assemble(grid, rows, comparisons, info)


def _failures(grid: Grid, stage: str, store: RunStore, scheduler: Scheduler, failed_before: set[str]) -> dict:
    """key -> error of the cells of `stage` that failed: in this invocation, or in an earlier one and not retried
    since (it was interrupted)."""
    failures = {}
    for cell in grid.stage(stage):
        if scheduler.state[cell.key] in (FAILED, BLOCKED):
            failures[cell.key] = scheduler.errors.get(cell.key)
        elif scheduler.state[cell.key] != DONE and cell.key in failed_before:
            failures[cell.key] = store.read_failure(cell.key)
    return failures


def _finished_trials(store: RunStore, grid: Grid, done: set[str]) -> dict[str, dict]:
    """tuning.parquet's rows of the finished trial cells (their values and scores: the studies' searchers resume
    from them); a row the table lacks is read from the cell's meta, a damaged meta leaves it out."""
    keys = [key for key in grid.stage_keys("tune") if key in done]
    if not keys:
        return {}
    table = read_tuning(store, lambda message: None)  # damaged: rebuilt from the metas
    rows = {row["key"]: row for row in (table.to_pylist() if table is not None else [])
            if row["key"] in done and row["status"] in ("ok", "diverged")}  # fmt: skip
    _recover(store, grid, [key for key in keys if key not in rows], rows, "tune")
    return rows


def read_tuning(store: RunStore, log) -> pa.Table | None:
    """The run's tuning.parquet; None without one, or when it is damaged (said once, through `log`)."""
    return _optional_parquet(store, "tuning.parquet", "its tuning trials are left out", log)


def _stale_choices(store: RunStore, grid: Grid, done: set[str]) -> set[str]:
    """Finished METHOD@tuned unlearn cells to run again, with everything below them: those whose choice did not
    consider every trial of its study (one had failed; it runs again now, and the choice waits for it). Their keys
    cannot say so: they name the trials, not their outcomes. One meta read per finished tuned unlearn cell."""
    stale = set()
    for cell in grid.stage("unlearn"):
        if "study" not in cell.params or cell.key not in done:
            continue
        try:
            considered = len(store.read_meta(cell.key)["metrics"]["tuned"]["trials"])
        except (CorruptArtifact, KeyError):
            considered = 0
        if considered < len(cell.inputs):
            stale.add(cell.key)
    return _with_descendants(grid, stale) if stale else stale


def _with_descendants(grid: Grid, keys: set[str]) -> set[str]:
    readers: dict[str, list[str]] = {}
    for cell in grid.cells.values():
        for read in cell.reads:
            readers.setdefault(read, []).append(cell.key)
    found, todo = set(keys), list(keys)
    while todo:
        for reader in readers.get(todo.pop(), []):
            if reader not in found:
                found.add(reader)
                todo.append(reader)
    return found


def _recover(store: RunStore, grid: Grid, keys: list[str], into: dict, stage: str, discard: bool = True) -> set[str]:
    """Rows (or comparisons) no table holds, read from each cell's meta. Returns the keys whose meta is damaged:
    their artifacts are discarded (unless `discard` is False: read-only commands) and the cells run again."""

    def read(key: str):
        try:
            meta = store.read_meta(key)
        except CorruptArtifact:
            if discard:
                store.discard_artifact(key)
            return key, None
        readers = {"evaluate": evaluation_row, "tune": tuning_row}
        return key, readers[stage](grid.cells[key], meta) if stage in readers else meta["metrics"]

    damaged = set()
    with ThreadPoolExecutor(READERS) as pool:
        for key, value in pool.map(read, keys):
            if value is None:
                damaged.add(key)
            else:
                into[key] = value
    return damaged


def _sync_evaluations(store: RunStore, table: pa.Table) -> None:
    """evaluations/ holds one JSON per ok row of the table, and nothing else."""
    from cvmf_ray.schema import OWN_COLUMNS

    ok = {row["key"]: row for row in table.select(OWN_COLUMNS).to_pylist() if row["status"] == "ok"}
    present = {name[: -len(".json")] for name in store.list_names("evaluations") if name.endswith(".json")}
    with ThreadPoolExecutor(READERS) as pool:
        list(pool.map(lambda key: store.remove("evaluations", f"{key}.json"), present - ok.keys()))
        list(pool.map(lambda key: store.write_json(ok[key], "evaluations", f"{key}.json"), ok.keys() - present))


def read_grid(store: RunStore) -> Grid:
    """The run's grid.json, or one line saying it is damaged and how to rewrite it."""
    try:
        return Grid.from_json(store.read_json("grid.json"))
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"{store.path('grid.json')} is damaged ({type(err).__name__}); rerun `cvmf-ray grid` with this run's "
            "options to rewrite it (finished cells are kept)"
        ) from None


def read_table(store: RunStore, log) -> pa.Table:
    """The run's results table; when results.parquet is missing or damaged, rebuilt (not written) from the cells'
    metas and failure records (grid.json says which cells there are). Says so in one line through `log`."""
    notes: list[str] = []
    table = _previous_table(store, notes.append)
    if table is not None:
        return table
    grid = read_grid(store)
    listing = store.listing()
    rows, comparisons = {}, {}
    done = set(listing.done)
    for stage, into in (("evaluate", rows), ("compare", comparisons)):
        done -= _recover(store, grid, [c.key for c in grid.stage(stage) if c.key in done], into, stage, discard=False)
    why = notes[0].removeprefix("warning: ").split(";")[0] if notes else "results.parquet is missing"
    log(f"{why}: rebuilt {len(rows)} finished rows of {len(grid.stage('evaluate'))} from evaluations/ and artifacts/")
    return _table(None, grid, store, Scheduler(grid, done & grid.cells.keys()), listing.failed, rows, comparisons,
                  time.time())  # fmt: skip
