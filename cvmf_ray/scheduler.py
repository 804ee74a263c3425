"""The state of a grid's DAG during one invocation, and which ready cells run next. Pure Python, no Ray.

Every unfinished cell is WAITING until its parent is done and each of its inputs has settled (done, failed or
blocked), then READY; handed to a trial it is RUNNING, and it ends DONE, FAILED (it raised) or BLOCKED (its
parent failed or was blocked). Ready cells are handed out by critical path: a cell's rank is its own estimated
cost plus the largest rank among the cells that read it, so an `original` (which every unlearn cell waits on)
goes before a retrain, and an unlearn cell before an evaluation. A parent found corrupt where it was read goes
back to READY and its reader to WAITING, at most `MAX_RECOMPUTES` times.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field

from cvmf_ray.grid import STAGES, Cell, Grid

WAITING, READY, RUNNING, DONE, FAILED, BLOCKED = "waiting", "ready", "running", "done", "failed", "blocked"
SETTLED = (DONE, FAILED, BLOCKED)
MAX_RECOMPUTES = 2
# relative cost of a cell in epochs of its model's training, only used to order ready cells
STAGE_COST = {"unlearn": 2.0, "quantize": 0.2, "evaluate": 0.5, "compare": 0.1}


def cell_cost(cell: Cell) -> float:
    return float(cell.params["recipe"]["epochs"]) if cell.stage == "train" else STAGE_COST[cell.stage]


@dataclass
class Scheduler:
    grid: Grid
    done: set[str]  # cells finished before this invocation
    state: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)  # where a cell finished in this invocation

    def __post_init__(self) -> None:
        self.readers: dict[str, list[str]] = {key: [] for key in self.grid.cells}
        for cell in self.grid.cells.values():
            for key in cell.reads:
                self.readers[key].append(cell.key)
        self.rank = self._ranks()
        self._ready: dict[bool, list] = {True: [], False: []}  # is-training -> heap of (-rank, seq, key)
        self._seq = itertools.count()
        self.recomputes: Counter = Counter()
        for key in self.grid.cells:
            self.state[key] = DONE if key in self.done else WAITING
        for key, state in list(self.state.items()):
            if state == WAITING:
                self._update(key)

    def _ranks(self) -> dict[str, float]:
        rank: dict[str, float] = {}
        for cell in sorted(self.grid.cells.values(), key=lambda c: -STAGES.index(c.stage)):  # readers first
            rank[cell.key] = cell_cost(cell) + max((rank[r] for r in self.readers[cell.key]), default=0.0)
        return rank

    # ---- transitions
    def _update(self, key: str) -> None:
        """Move a WAITING cell on once its parent and inputs allow; blocking spreads to its readers."""
        if self.state[key] != WAITING:
            return
        cell = self.grid.cells[key]
        parent = self.state.get(cell.parent) if cell.parent else DONE
        if parent in (FAILED, BLOCKED):
            self.state[key] = BLOCKED
            self.errors[key] = self._upstream_error(cell.parent)
            for reader in self.readers[key]:
                self._update(reader)
        elif parent == DONE and all(self.state[k] in SETTLED for k in cell.inputs.values()):
            self.state[key] = READY
            heapq.heappush(self._ready[cell.stage == "train"], (-self.rank[key], next(self._seq), key))

    def _upstream_error(self, key: str) -> str:
        cell = self.grid.cells[key]
        reason = self.errors.get(key, "did not finish")
        return reason if reason.startswith("upstream ") else f"upstream {cell.stage} cell {key} failed: {reason}"

    def _settle(self, key: str, state: str) -> None:
        self.state[key] = state
        for reader in self.readers[key]:
            self._update(reader)

    def mark_done(self, key: str, node: str | None = None) -> None:
        if self.state[key] in (RUNNING, READY, WAITING):
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
            self.state[key] = WAITING
            self._update(key)

    def mark_corrupt(self, reader: str, parent: str, error: str) -> None:
        """`reader` found `parent`'s artifact damaged (and discarded it): recompute the parent, then the reader."""
        if self.state[reader] == RUNNING:
            self.state[reader] = WAITING
        if self.state[parent] != DONE:
            return  # another reader reported it first
        self.recomputes[parent] += 1
        self.node_of.pop(parent, None)
        self.done.discard(parent)
        if self.recomputes[parent] > MAX_RECOMPUTES:
            self.mark_failed(parent, f"its artifact was found damaged {self.recomputes[parent]} times: {error}")
            return
        for other in self.readers[parent]:
            if self.state[other] == READY:
                self.state[other] = WAITING  # its heap entry is skipped when popped
        self.state[parent] = WAITING
        self._update(parent)

    # ---- handing out work
    def next_batch(self, max_cells: int) -> list[Cell]:
        """The highest-ranked ready cell; if it is not training, up to `max_cells` ready cheap cells with it."""
        tops = {training: self._peek(heap) for training, heap in self._ready.items()}
        candidates = [(entry[0], training) for training, entry in tops.items() if entry is not None]
        if not candidates:
            return []
        _, training = min(candidates)
        batch = []
        while len(batch) < (1 if training else max_cells) and self._peek(self._ready[training]) is not None:
            key = heapq.heappop(self._ready[training])[2]
            self.state[key] = RUNNING
            batch.append(self.grid.cells[key])
        return batch

    def _peek(self, heap: list):
        while heap and self.state[heap[0][2]] != READY:
            heapq.heappop(heap)  # stale entry: the cell moved on since it was pushed
        return heap[0] if heap else None

    # ---- questions
    def ready_count(self, training: bool | None = None) -> int:
        heaps = self._ready.values() if training is None else [self._ready[training]]
        return sum(1 for heap in heaps for entry in heap if self.state[entry[2]] == READY)

    @property
    def finished(self) -> bool:
        return not any(state in (READY, RUNNING) for state in self.state.values())

    def counts(self) -> dict[str, Counter]:
        """Per stage: cells done, running, failed (blocked included) and pending (waiting or ready)."""
        out = {stage: Counter() for stage in STAGES}
        bucket = {DONE: "done", RUNNING: "running", FAILED: "failed", BLOCKED: "failed", WAITING: "pending",
                  READY: "pending"}  # fmt: skip
        for key, state in self.state.items():
            out[self.grid.cells[key].stage][bucket[state]] += 1
        return out

    def releasable(self, key: str) -> bool:
        """Every reader of `key` has settled: nobody will ask for its bytes again in this invocation."""
        return all(self.state[r] in SETTLED for r in self.readers[key])
