"""The state of a grid's DAG during one invocation, and which ready cells run next. Pure Python, no Ray.

Every unfinished cell is WAITING until its parent is done and each of its inputs has settled (done, failed or
blocked), then READY; handed to a trial it is RUNNING, and it ends DONE, FAILED (it raised) or BLOCKED (its
parent failed or was blocked). Ready cells are handed out by critical path: a cell's rank is its own estimated
cost plus the largest rank among the cells that read it, so an `original` (which every unlearn cell waits on)
goes before a retrain, and an unlearn cell before an evaluation. Cells that fit a model (train, unlearn) run
one per trial; the cheap ones (quantize, evaluate, compare) are handed out in batches. A parent found corrupt
where it was read goes back to READY and its reader to WAITING, at most `MAX_RECOMPUTES` times.

Every state change goes through `_set`, which keeps the counts the searcher and the progress display ask for
many times a second: on a 20,000-cell grid nothing here walks the whole grid after start-up.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter

from cvmf_ray.datasets import DATASETS
from cvmf_ray.grid import STAGES, Cell, Grid

WAITING, READY, RUNNING, DONE, FAILED, BLOCKED = "waiting", "ready", "running", "done", "failed", "blocked"
SETTLED = (DONE, FAILED, BLOCKED)
OPEN = (WAITING, READY, RUNNING)  # still to run
SHOWN_AS = {DONE: "done", RUNNING: "running", FAILED: "failed", BLOCKED: "failed", WAITING: "pending",
            READY: "pending"}  # fmt: skip
MAX_RECOMPUTES = 2
# relative cost of a cell in epochs of its model's training, only used to order ready cells
STAGE_COST = {"tune": 1.0, "unlearn": 2.0, "reestimate": 0.2, "quantize": 0.2, "evaluate": 0.5, "compare": 0.1}
SOLO_STAGES = ("train", "tune", "unlearn")  # they fit a model: a trial each


def is_solo(cell: Cell) -> bool:
    return cell.stage in SOLO_STAGES


def cell_cost(cell: Cell) -> float:
    return float(cell.params["recipe"]["epochs"]) if cell.stage == "train" else STAGE_COST[cell.stage]


def cell_work(cell: Cell) -> float:
    """A cell's work before it runs, in pixels through its model: what decides whether it is worth a wide trial
    (runner.py). Training and unlearning: epochs x training images (an upper bound for a method that reads only
    the forget set); evaluation: every train and test image once, or a bounded one's retain sample and the test set
    (forward passes plus the attacks' and metrics' own work, measured on Fashion-MNIST at about a training epoch's
    time); BatchNorm re-estimation: its batches; quantization: its calibration images; a comparison reads logits
    only."""
    p = cell.params
    spec = DATASETS.get(p["dataset"])
    images = {
        "train": lambda: p["recipe"]["epochs"] * spec.train_size,
        "tune": lambda: len(p["seeds"]) * spec.train_size,  # its epochs are chosen when it starts: one each
        "unlearn": lambda: p.get("hparams", {}).get("epochs", 1) * spec.train_size,
        "reestimate": lambda: p["batches"] * p["batch_size"],
        "quantize": lambda: p["calibration_size"],
        "evaluate": lambda: min(p.get("retain_images", spec.train_size), spec.train_size) + spec.test_size,
        "compare": lambda: 0,
    }[cell.stage]()
    return float(images) * spec.in_channels * spec.image_size**2


class Scheduler:
    def __init__(self, grid: Grid, done: set[str]) -> None:
        self.grid = grid
        self.state: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.node_of: dict[str, str] = {}  # where a cell finished in this invocation
        self.recomputes: Counter = Counter()
        self.readers: dict[str, list[str]] = {key: [] for key in grid.cells}
        for cell in grid.cells.values():
            for key in cell.reads:
                self.readers[key].append(cell.key)
        self.rank = self._ranks()
        self._ready: dict[bool, list] = {True: [], False: []}  # solo? -> heap of (-rank, seq, key)
        self._seq = itertools.count()
        self._shown = {stage: Counter() for stage in STAGES}  # stage -> {done, running, failed, pending}
        self._live = 0  # cells READY or RUNNING
        self._ready_count = Counter()  # solo? -> READY cells
        self._unsettled_readers = Counter({key: len(readers) for key, readers in self.readers.items()})
        self.cost_left = 0.0  # estimated cost (`cell_cost`) of the cells still to run
        self.cost_done = 0.0  # of the cells finished in this invocation: with the time taken, an ETA
        for key in grid.cells:
            self._set(key, DONE if key in done else WAITING)
        for key in list(grid.cells):
            self._update(key)

    def _ranks(self) -> dict[str, float]:
        rank: dict[str, float] = {}
        for cell in sorted(self.grid.cells.values(), key=lambda c: -STAGES.index(c.stage)):  # readers first
            rank[cell.key] = cell_cost(cell) + max((rank[r] for r in self.readers[cell.key]), default=0.0)
        return rank

    # ---- transitions
    def _set(self, key: str, new: str) -> None:
        cell, old = self.grid.cells[key], self.state.get(key)
        if old is not None:
            self._shown[cell.stage][SHOWN_AS[old]] -= 1
            self._live -= old in (READY, RUNNING)
            self._ready_count[is_solo(cell)] -= old == READY
        self.state[key] = new
        self.cost_left += cell_cost(cell) * ((new in OPEN) - (old in OPEN))
        self.cost_done += cell_cost(cell) * (new == DONE and old is not None)
        self._shown[cell.stage][SHOWN_AS[new]] += 1
        self._live += new in (READY, RUNNING)
        self._ready_count[is_solo(cell)] += new == READY
        if new == READY:
            heapq.heappush(self._ready[is_solo(cell)], (-self.rank[key], next(self._seq), key))
        settled = (new in SETTLED) - (old in SETTLED)  # +1 when it settles, -1 when it is recomputed
        for read in cell.reads:
            self._unsettled_readers[read] -= settled

    def _update(self, key: str) -> None:
        """Move a WAITING cell on once its parent and inputs allow; blocking spreads to its readers."""
        if self.state[key] != WAITING:
            return
        cell = self.grid.cells[key]
        parent = self.state.get(cell.parent) if cell.parent else DONE
        if parent in (FAILED, BLOCKED):
            self.errors[key] = self._upstream_error(cell.parent)
            self._settle(key, BLOCKED)
        elif parent == DONE and all(self.state[k] in SETTLED for k in cell.inputs.values()):
            self._set(key, READY)

    def _upstream_error(self, key: str) -> str:
        cell = self.grid.cells[key]
        reason = self.errors.get(key, "did not finish")
        return reason if reason.startswith("upstream ") else f"upstream {cell.stage} cell {key} failed: {reason}"

    def _settle(self, key: str, state: str) -> None:
        self._set(key, state)
        for reader in self.readers[key]:
            self._update(reader)

    def mark_done(self, key: str, node: str | None = None) -> None:
        if self.state[key] not in SETTLED:
            if node is not None:
                self.node_of[key] = node
            self._settle(key, DONE)

    def mark_failed(self, key: str, error: str) -> None:
        if self.state[key] not in SETTLED:
            self.errors[key] = error
            self._settle(key, FAILED)

    def requeue(self, key: str) -> None:
        """A cell whose trial ended without reporting it (the run was stopped) is ready again."""
        if self.state[key] == RUNNING:
            self._set(key, WAITING)
            self._update(key)

    def mark_corrupt(self, reader: str, parent: str, error: str) -> None:
        """`reader` found `parent`'s artifact damaged (and discarded it): recompute the parent, then the reader."""
        if self.state[reader] == RUNNING:
            self._set(reader, WAITING)
        if self.state[parent] != DONE:
            return  # another reader reported it first
        self.recomputes[parent] += 1
        self.node_of.pop(parent, None)
        if self.recomputes[parent] > MAX_RECOMPUTES:
            self._set(parent, WAITING)
            self.mark_failed(parent, f"its artifact was found damaged {self.recomputes[parent]} times: {error}")
            return
        for other in self.readers[parent]:
            if self.state[other] == READY:
                self._set(other, WAITING)  # its heap entry is skipped when popped
        self._set(parent, WAITING)
        self._update(parent)

    # ---- handing out work
    def next_batch(self, max_cells: int) -> list[Cell]:
        """The highest-ranked ready cell; if it is a cheap one, up to `max_cells` ready cheap cells with it."""
        tops = {solo: self._peek(heap) for solo, heap in self._ready.items()}
        candidates = [(entry[0], solo) for solo, entry in tops.items() if entry is not None]
        if not candidates:
            return []
        _, solo = min(candidates)
        batch = []
        while len(batch) < (1 if solo else max_cells) and self._peek(self._ready[solo]) is not None:
            key = heapq.heappop(self._ready[solo])[2]
            self._set(key, RUNNING)
            batch.append(self.grid.cells[key])
        return batch

    def _peek(self, heap: list):
        while heap and self.state[heap[0][2]] != READY:
            heapq.heappop(heap)  # stale entry: the cell moved on since it was pushed
        return heap[0] if heap else None

    # ---- questions (all O(1), asked many times a second)
    def ready_count(self, solo: bool | None = None) -> int:
        return sum(self._ready_count.values()) if solo is None else self._ready_count[solo]

    @property
    def finished(self) -> bool:
        return self._live == 0

    def counts(self) -> dict[str, Counter]:
        """Per stage: cells done, running, failed (blocked included) and pending (waiting or ready)."""
        return {stage: Counter(shown) for stage, shown in self._shown.items()}

    def releasable(self, key: str) -> bool:
        """Every reader of `key` has settled: nobody will ask for its bytes again in this invocation."""
        return self._unsettled_readers[key] == 0
