"""The DAG scheduler on real grids, without Ray: what becomes ready when, in which order, and what a failure
or a damaged parent does to the cells that read it."""

from collections import Counter
from types import SimpleNamespace

from cvmf_ray.config import load_config
from cvmf_ray.driver import _stale_comparisons
from cvmf_ray.grid import expand_grid
from cvmf_ray.progress import Progress
from cvmf_ray.runner import DagSearcher
from cvmf_ray.scheduler import BLOCKED, DONE, FAILED, READY, RUNNING, WAITING, Scheduler


def grid_of(**options):
    return expand_grid(load_config(**options))


def keys(cells) -> list[str]:
    return [c.key for c in cells]


def test_the_original_goes_first_and_nothing_waits_for_a_stage_to_end():
    grid = grid_of(forget_classes="0,1", quant="fp32,int8")
    scheduler = Scheduler(grid, set())
    ready = [scheduler.grid.cells[k] for k, s in scheduler.state.items() if s == READY]
    assert {c.stage for c in ready} == {"train"} and len(ready) == 3  # the original and two retrains
    (first,) = scheduler.next_batch(max_cells=8)
    assert first.params["exclude"] is None  # the original: every unlearn cell waits on it
    scheduler.mark_done(first.key)
    now_ready = {scheduler.grid.cells[k].stage for k, s in scheduler.state.items() if s == READY}
    assert {"train", "unlearn", "quantize", "evaluate"} <= now_ready  # streaming: retrains still pending
    solos = []
    while (batch := scheduler.next_batch(max_cells=3))[0].stage in ("train", "unlearn"):
        assert len(batch) == 1  # a cell that fits a model is a trial of its own
        solos += batch
    # the two retrains (30 epochs of work each) first, then the six unlearn cells, before any cheap cell
    assert [c.stage for c in solos] == ["train"] * 2 + ["unlearn"] * 6
    assert len(batch) == 3 and {c.stage for c in batch} <= {"quantize", "evaluate"}
    assert all(scheduler.state[c.key] == RUNNING for c in [*solos, *batch])


def test_a_failure_blocks_what_reads_it_and_optional_inputs_only_wait_for_it_to_settle():
    grid = grid_of()
    scheduler = Scheduler(grid, set())
    original, retrain = sorted(grid.stage("train"), key=lambda c: c.params["exclude"] is not None)
    scheduler.next_batch(1)
    scheduler.mark_done(original.key)
    scheduler.next_batch(1)
    scheduler.mark_failed(retrain.key, "RuntimeError: out of memory")
    for cell in grid.cells.values():
        if retrain.key in [c.key for c in grid.lineage(cell.key)][1:]:  # everything built on the retrain
            assert scheduler.state[cell.key] == BLOCKED
            assert scheduler.errors[cell.key].startswith(f"upstream train cell {retrain.key} failed: RuntimeError")
    quantized = [c for c in grid.stage("quantize") if c.params["method"] == "finetune"]
    assert all(c.inputs == {"reference": original.key} for c in quantized)
    counts = scheduler.counts()
    assert counts["train"] == {"done": 1, "failed": 1, "pending": 0, "running": 0}
    assert sum(counts["evaluate"].values()) == len(grid.stage("evaluate"))
    # a compare cell reads the retrain's evaluations as optional inputs: they failed, so it runs without them
    compare = next(c for c in grid.stage("compare") if c.params["method"] == "finetune" and c.params["quant"] == "fp32")
    for key in (k for k in compare.reads if scheduler.state[k] not in (FAILED, BLOCKED)):
        assert scheduler.state[key] in (READY, WAITING)
    finetune_eval = compare.inputs["model:0"]
    unlearn = grid.cells[finetune_eval].parent
    for key in (unlearn, finetune_eval):
        scheduler._set(key, RUNNING)
        scheduler.mark_done(key)
    assert scheduler.state[compare.key] == READY


def test_a_damaged_parent_is_recomputed_then_its_reader_and_gives_up_after_two_tries():
    grid = grid_of(methods="original,finetune", quant="fp32")
    original = next(c for c in grid.stage("train"))
    unlearn = next(c for c in grid.stage("unlearn"))
    scheduler = Scheduler(grid, {original.key})
    assert scheduler.state[unlearn.key] == READY
    for attempt in (1, 2, 3):
        (cell,) = scheduler.next_batch(1)
        assert cell.key == unlearn.key
        scheduler.mark_corrupt(unlearn.key, original.key, "model.safetensors does not match its SHA-256")
        if attempt < 3:
            assert scheduler.state[unlearn.key] == WAITING and scheduler.state[original.key] == READY
            (again,) = scheduler.next_batch(1)
            assert again.key == original.key
            scheduler.mark_done(original.key)
    assert scheduler.state[original.key] == FAILED and "damaged 3 times" in scheduler.errors[original.key]
    assert scheduler.state[unlearn.key] == BLOCKED


def test_a_finished_grid_hands_out_nothing():
    grid = grid_of()
    scheduler = Scheduler(grid, set(grid.cells))
    assert scheduler.finished and scheduler.next_batch(8) == [] and scheduler.ready_count() == 0
    assert all(state == DONE for state in scheduler.state.values())


def test_progress_tells_cells_running_from_cells_queued_for_resources():
    scheduler = Scheduler(grid_of(forget_classes="0,1"), set())
    batches = [scheduler.next_batch(max_cells=1) for _ in range(3)]  # the original and two retrains
    live = {f"trial-{i}": keys(batch) for i, batch in enumerate(batches)}
    searcher = SimpleNamespace(scheduler=scheduler, live=live, started={"trial-0"})
    lines = []
    work = lambda: (scheduler.cost_done, scheduler.cost_left)  # noqa: E731
    progress = Progress(lambda: DagSearcher.counts(searcher), work, verbose=False, log=lines.append, live=False)
    assert "train 0/3 (1 running, 2 queued)" in progress.summary()
    scheduler.mark_done(batches[0][0].key)
    searcher.started.update({"trial-1", "trial-2"})
    assert "train 1/3 (2 running)" in progress.summary() and " · ETA " in progress.summary()
    # the ETA weighs what is left by its estimated cost: two trainings and every cheaper cell after them
    assert scheduler.cost_done == 30 and scheduler.cost_left > 60


def test_a_comparison_that_missed_a_seed_runs_again_once_that_seed_has_finished():
    grid = grid_of(seeds="0,1", methods="original,retrain,finetune", quant="fp32")
    done = set(grid.cells)

    def covering(cell, seeds):
        return {"rows": {cell.inputs[f"model:{s}"]: {} for s in seeds}, "group": {}}

    comparisons = {c.key: covering(c, (0, 1)) for c in grid.stage("compare")}
    assert not _stale_comparisons(grid, done, dict(comparisons))
    finetune = next(c for c in grid.stage("compare") if "finetune" in c.describe())
    comparisons[finetune.key] = covering(finetune, (0,))  # it ran while seed 1's evaluation had failed
    assert not _stale_comparisons(grid, done - {finetune.inputs["model:1"]}, dict(comparisons))  # still failed
    assert _stale_comparisons(grid, done, comparisons) == {finetune.key} and finetune.key not in comparisons


def test_a_cell_whose_trial_tune_gave_up_on_runs_once_more_unless_it_raised():
    scheduler = Scheduler(grid_of(), set())
    notes, failures = [], {}
    searcher = SimpleNamespace(
        scheduler=scheduler, live={}, started=set(), held={}, retry_errors={}, reruns=Counter(),
        progress=SimpleNamespace(note=notes.append, cell_failed=lambda cell, reason: None, cell_stopped=len),
        store=SimpleNamespace(save_failure=failures.__setitem__), _scored=lambda key, objective: None,
    )  # fmt: skip

    def tune_gives_up(cell) -> None:
        assert keys(scheduler.next_batch(max_cells=1)) == [cell.key]
        searcher.live["trial"] = [cell.key]
        DagSearcher.on_trial_complete(searcher, "trial", error=True)

    original, retrain = scheduler.grid.stage("train")
    tune_gives_up(original)  # its processes died: it never raised
    assert scheduler.state[original.key] == READY and not failures and "process died" in notes[0]
    tune_gives_up(original)  # and died again in its new trial: now it fails
    assert scheduler.state[original.key] == FAILED and "failed for good" in failures[original.key]
    searcher.retry_errors[retrain.key] = "ValueError: boom"  # it raised: no new trial
    tune_gives_up(retrain)
    assert scheduler.state[retrain.key] == FAILED and failures[retrain.key] == "ValueError: boom"


def test_a_long_cell_shows_its_epochs_and_speed_on_one_line_and_the_eta_counts_them():
    scheduler = Scheduler(grid_of(methods="original", quant="fp32"), set())
    (original,) = scheduler.next_batch(max_cells=1)
    searcher = SimpleNamespace(scheduler=scheduler, live={"trial": [original.key]}, started={"trial"})
    work = lambda: (scheduler.cost_done, scheduler.cost_left)  # noqa: E731
    progress = Progress(lambda: DagSearcher.counts(searcher), work, verbose=False, log=print, live=False)
    assert "train 0/1 (1 running)" in progress.summary() and "ETA" not in progress.summary()  # nothing done yet
    progress.cell_progress(original, {"epoch": 7.5, "epochs": 30, "images_per_s": 3120.4})
    line = progress.summary()
    assert "train 0/1 (1 running: epoch 7.5/30, 3,120 img/s)" in line and " · ETA " in line and "\n" not in line
    progress.cell_stopped(original.key)  # its trial ended: the reading no longer describes work
    assert "epoch" not in progress.summary()
