"""Each tuning study's searcher, inside the one Tuner: Ray Tune's `OptunaSearch` (TPE, seeded) per study.

Ray does not support nested Tuners, so the DAG searcher (runner.py) wraps one searcher per study the way Ray's own
`ConcurrencyLimiter` and `Repeater` wrap theirs: when it hands a study's trial cell to a Tune trial it asks that
study's searcher for values under the same trial id, and when the cell reports it tells the searcher its objective.

State is keyed by cell, not by Tune trial id (Tune gives a retried trial a new id): a trial cell is the study's
trial number, its artifact holds its values and score. At start every trial that finished earlier is told to its
study's searcher as an evaluated point, so a run killed mid-study and rerun continues the search from what
finished and never reruns a finished trial. A failed or diverged trial is told the worst score; a trial stopped
before it reported (the run was interrupted) is told nothing but a failure, and its cell gets new values.
"""

from __future__ import annotations

import json
from collections import Counter

from cvmf_ray.grid import Cell, Grid
from cvmf_ray.methods import resolve_method
from cvmf_ray.search_space import tune_domains

OBJECTIVE = "objective"
STARTUP_TRIALS = 10  # TPE's random start (Optuna's default), at most half a study's trials


class Studies:
    def __init__(self, grid: Grid, finished: dict[str, dict]) -> None:
        """`finished`: trial key -> its tuning.parquet row, for every trial cell finished before this invocation."""
        self.grid = grid
        self.sizes = Counter(cell.params["study"] for cell in grid.stage("tune"))
        self.resumed = Counter(grid.cells[key].params["study"] for key in finished)
        self.searchers: dict[str, object] = {}
        self.asked: dict[str, tuple[str, dict]] = {}  # trial key -> (Tune trial id, values) awaiting its score
        for key, row in sorted(finished.items(), key=lambda item: item[1]["trial"]):
            self._tell(grid.cells[key], json.loads(row["hparams"]), row[OBJECTIVE])

    def _searcher(self, cell: Cell):
        study = cell.params["study"]
        if study not in self.searchers:
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(
                # from the study key: reproducible and distinct per study; moved on by the trials it resumes from,
                # or its random start would suggest their values again
                seed=int(study[:8], 16) + self.resumed[study],
                n_startup_trials=max(1, min(STARTUP_TRIALS, self.sizes[study] // 2)),
                constant_liar=True,  # trials run side by side: pending ones count as bad, so they spread out
            )
            space = OptunaSearch.convert_search_space(tune_domains(cell.params["space"]))  # Optuna's distributions
            self.searchers[study] = OptunaSearch(space, metric=OBJECTIVE, mode="min", sampler=sampler)
        return self.searchers[study]

    def _tell(self, cell: Cell, values: dict, objective: float) -> None:
        """A trial that ran with `values` (every value of the method), as an evaluated point of its study."""
        self._searcher(cell).add_evaluated_point({name: values[name] for name in cell.params["space"]}, objective)

    def suggest(self, cell: Cell, trial_id: str) -> dict:
        """The trial cell's values, every one of the method's: the searched ones from its study's searcher, the rest
        as the grid resolves them (`published`)."""
        self.complete(cell.key, None)  # values it was given before and never ran with (its trial was stopped)
        p = cell.params
        searched = self._searcher(cell).suggest(trial_id)
        method = resolve_method(p["method"])
        values = method.every_value(method.resolve_params({**p["published"], **searched}, None, p["dataset"]))
        self.asked[cell.key] = (trial_id, values)
        return values

    def complete(self, key: str, objective: float | None, values: dict | None = None) -> None:
        """Tell a trial cell's searcher its score; None: it was stopped unscored (its values are dropped). `values`,
        when the cell reports ones it was not given here (an earlier attempt finished it), are told instead."""
        if key not in self.asked:
            return
        trial_id, asked = self.asked.pop(key)
        cell = self.grid.cells[key]
        searcher = self._searcher(cell)
        if objective is None or (values is not None and values != asked):
            searcher.on_trial_complete(trial_id, error=True)
            if objective is not None:
                self._tell(cell, values, objective)
            return
        searcher.on_trial_complete(trial_id, result={OBJECTIVE: objective})
