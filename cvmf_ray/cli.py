"""`cvmf-ray`: expand model × dataset × method × quant lists into a Ray Tune grid, run it, report it.

    cvmf-ray grid                       # the embedded default (digits), on this machine
    cvmf-ray grid --config configs/fashionmnist-resnet18.yaml --gpus 4
    cvmf-ray status results/default
    cvmf-ray results results/default --format csv

Exit codes: 0 all cells ok; 1 some cells failed (the rest finished and were saved); 2 bad input.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cvmf_ray.errors import UsageError

app = typer.Typer(
    help="Can vision models forget, and does the forgetting survive quantization? A Ray Tune sweep runner.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

GRID, RESOURCES, OUTPUT = "Grid", "Resources", "Output"


def _option(help: str, panel: str = GRID, **kwargs):
    return typer.Option(help=help, rich_help_panel=panel, show_default=False, **kwargs)


def echo(message: str) -> None:
    print(message, flush=True)


@app.command()
def grid(
    config: Annotated[Path | None, _option("YAML file of grid options; command-line options override it.")] = None,
    models: Annotated[str | None, _option("Comma-separated models (default small_cnn).")] = None,
    datasets: Annotated[str | None, _option("Comma-separated datasets (default digits).")] = None,
    methods: Annotated[
        str | None,
        _option(
            "Comma-separated unlearning methods, or mypkg.mymod:function "
            "(default original,retrain,finetune,gradient_ascent,random_label)."
        ),
    ] = None,
    quant: Annotated[str | None, _option("Comma-separated quant modes (default fp32,fp16,bf16,int8).")] = None,
    forget_classes: Annotated[str | None, _option("Comma-separated classes to forget, or 'all' (default 0).")] = None,
    forget_fractions: Annotated[
        str | None, _option("Comma-separated fractions of the training set to forget at random (default none).")
    ] = None,
    seeds: Annotated[str | None, _option("Comma-separated seeds (default 0).")] = None,
    epochs: Annotated[int | None, _option("Training epochs for original and retrain (default: the recipe's).")] = None,
    unlearn_epochs: Annotated[
        int | None, _option("Epochs for every unlearning method (default: each its own).")
    ] = None,
    method_params: Annotated[
        list[str] | None, _option("Method hyperparameter, METHOD.NAME=VALUE; repeatable (salun.mask_ratio=0.5).")
    ] = None,
    data_root: Annotated[str | None, _option("Dataset folder (default ~/.cache/cvmf-ray/data).")] = None,
    compile: Annotated[bool | None, _option("torch.compile models for training (CUDA only).")] = None,
    gpus: Annotated[int | None, _option("GPUs of the local Ray instance (default: all visible).", RESOURCES)] = None,
    cpus: Annotated[int | None, _option("CPUs of the local Ray instance (default: all).", RESOURCES)] = None,
    gpus_per_trial: Annotated[
        float | None, _option("GPU share per trial; fractions pack trials (default 1 with GPUs, else 0).", RESOURCES)
    ] = None,
    address: Annotated[str | None, _option("Join this Ray cluster instead of starting one.", RESOURCES)] = None,
    results_dir: Annotated[str | None, _option("Results folder or URI (default results).", OUTPUT)] = None,
    name: Annotated[
        str | None, _option("Run name: the run lives in RESULTS_DIR/NAME (default default).", OUTPUT)
    ] = None,
    max_failures: Annotated[int | None, _option("Retries of a failing trial (default 1).", RESOURCES)] = None,
    dry_run: Annotated[bool, _option("Print the expanded grid and run nothing.", OUTPUT)] = False,
    resume: Annotated[bool, _option("Reuse an existing run's finished cells (default on).", OUTPUT)] = True,
    dashboard: Annotated[bool, _option("Start Ray's dashboard on 127.0.0.1.", RESOURCES)] = False,
) -> None:
    """Run the whole pipeline (train, unlearn, quantize, evaluate) for every combination.

    Rerunning the same command resumes: finished cells are never recomputed.
    Example: cvmf-ray grid --methods finetune,salun --quant fp32,int8 --forget-classes 0,3

    Exit codes: 0 every cell ok; 1 some cells failed (the rest finished and were saved); 2 bad input
    (nothing was run or written); 130 / 143 interrupted by Ctrl-C / SIGTERM (rerun to resume).
    """
    from cvmf_ray.config import load_config
    from cvmf_ray.grid import expand_grid

    cfg = load_config(
        config,
        models=models,
        datasets=datasets,
        methods=methods,
        quant=quant,
        forget_classes=forget_classes,
        forget_fractions=forget_fractions,
        seeds=seeds,
        epochs=epochs,
        unlearn_epochs=unlearn_epochs,
        method_params=method_params or None,
        data_root=data_root,
        compile=compile,
        gpus=gpus,
        cpus=cpus,
        gpus_per_trial=gpus_per_trial,
        address=address,
        results_dir=results_dir,
        name=name,
        max_failures=max_failures,
        dashboard=dashboard or None,
    )
    expanded = expand_grid(cfg)
    if dry_run:
        _print_dry_run(expanded)
        return
    raise typer.Exit(_run(cfg, expanded, resume))


def _run(cfg, expanded, resume: bool) -> int:
    import ray

    from cvmf_ray.datasets import DATASETS
    from cvmf_ray.results import build_rows, write_results
    from cvmf_ray.runner import GridRunner, connect
    from cvmf_ray.store import RunStore, StorageFull

    store = RunStore(f"{cfg.results_dir.rstrip('/')}/{cfg.name}")
    store.check_usable()
    if not resume and store.file_exists("grid.json"):
        raise UsageError(f"run {store.uri!r} already exists and --no-resume was given; choose another --name")
    for dataset in cfg.datasets:
        DATASETS.get(dataset).check_available(cfg.data_root)
    started = time.perf_counter()
    failures: dict = {}
    try:
        pending = any(not store.is_done(key) for key in expanded.cells)
        # connect first: a request the cluster cannot fit is a UsageError before anything is written
        resources = connect(cfg, echo) if pending else None
        try:
            store.remove_stale_temporaries()
            grid_json = expanded.to_json()
            store.write_json(grid_json, "grid.json")
            if resources is None:
                echo(f"run {store.uri}: all {len(expanded.cells)} cells are finished; nothing to run")
            else:
                counts = ", ".join(f"{n} {stage}" for stage, n in grid_json["counts"].items())
                echo(f"run {store.uri}: {counts} cells")
                failures = GridRunner(cfg, expanded, store, resources, echo).run()
        finally:
            if resources is not None:
                ray.shutdown()
        rows = build_rows(expanded, store)
        write_results(rows, store)
    except StorageFull as err:
        echo(f"error: {err}; nothing partial was written: free space and rerun the same command to resume")
        return 1
    failed = [r for r in rows if r["status"] != "ok"]
    echo(
        f"finished in {time.perf_counter() - started:.1f} s: {len(rows) - len(failed)} of {len(rows)} evaluations ok"
        f" -> {store.path('results.parquet')}"
    )
    for row in failed[:10]:
        echo(f"  failed: {row['method']}/{row['quant']} ({row['key']}): {row['error']}")
    return 1 if failed or failures else 0


def _print_dry_run(expanded) -> None:
    summary = expanded.to_json()["counts"]
    echo("cells per stage: " + ", ".join(f"{stage} {n}" for stage, n in summary.items()))
    for cell in expanded.cells.values():
        parent = cell.parent or "-"
        echo(f"{cell.stage:9} {cell.key}  parent {parent:16}  {cell.describe()}")


@app.command()
def status(run_dir: Annotated[str, typer.Argument(help="A run directory (RESULTS_DIR/NAME) or URI.")]) -> None:
    """Cells done / failed / pending per stage, read from storage without running anything."""
    from cvmf_ray.grid import STAGES

    store = _existing_run(run_dir)
    cells = store.read_json("grid.json")["cells"]
    failures = store.failures()
    echo(f"{'stage':10}{'done':>6}{'failed':>8}{'pending':>9}")
    for stage in STAGES:
        keys = [c["key"] for c in cells if c["stage"] == stage]
        finished = {k for k in keys if store.is_done(k)}
        failed = sum(k in failures and k not in finished for k in keys)
        echo(f"{stage:10}{len(finished):>6}{failed:>8}{len(keys) - len(finished) - failed:>9}")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


TABLE_COLUMNS = (
    ("method", "method"),
    ("quant", "quant"),
    ("forget", "forget"),
    ("test_accuracy", "test"),
    ("forget_train_accuracy", "forget"),
    ("retain_train_accuracy", "retain"),
    ("mia_efficacy", "mia_eff"),
    ("gap_to_retrain", "gap"),
    ("recovery_forget_train_accuracy", "recov"),
    ("status", "status"),
)


@app.command()
def results(
    run_dir: Annotated[str, typer.Argument(help="A run directory (RESULTS_DIR/NAME) or URI.")],
    format: Annotated[Format, typer.Option(help="table (a readable summary), csv or json (every column).")] = (
        Format.table
    ),
) -> None:
    """Print a finished run's results table."""
    from cvmf_ray.results import read_results

    store = _existing_run(run_dir)
    if not store.file_exists("results.parquet"):
        raise UsageError(f"{run_dir!r} has no results.parquet yet: run `cvmf-ray grid` for it first")
    rows = read_results(store).to_pylist()
    if format is Format.json:
        echo(json.dumps(rows, indent=1))
    elif format is Format.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    header = [label for _, label in TABLE_COLUMNS]
    lines = [header]
    for row in rows:
        forget = f"class {row['forget_class']}" if row["forget_class"] is not None else f"{row['forget_fraction']:.0%}"
        cells = []
        for column, _ in TABLE_COLUMNS:
            value = forget if column == "forget" else row[column]
            cells.append(f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value)))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    models = sorted({(r["model"], r["dataset"], r["seed"]) for r in rows})
    echo(f"{len(rows)} rows; " + "; ".join(f"{m} on {d}, seed {s}" for m, d, s in models))


class Registry(str, Enum):
    models = "models"
    datasets = "datasets"
    methods = "methods"
    quant = "quant"


@app.command("list")
def list_names(what: Annotated[Registry, typer.Argument(help="models, datasets, methods or quant.")]) -> None:
    """List the registered names of one kind."""
    if what is Registry.models:
        from cvmf_ray.models import MODELS as registry
    elif what is Registry.datasets:
        from cvmf_ray.datasets import DATASETS as registry
    elif what is Registry.methods:
        from cvmf_ray.methods import METHODS as registry
    else:
        from cvmf_ray.quant import QUANT_MODES as registry
    for entry in registry.names():
        echo(entry)


@app.command()
def data(
    data_root: Annotated[str | None, typer.Option(help="Dataset folder (default ~/.cache/cvmf-ray/data).")] = None,
    prepare: Annotated[
        str | None,
        typer.Option(
            help="First lay out this dataset from a local package: fashionmnist (Debian's dataset-fashion-mnist)."
        ),
    ] = None,
) -> None:
    """Which datasets are under the data root, and whether every file is intact.

    One line per dataset: present (with the checks each file passed: structure, and the md5 where one is
    published), missing (where the files go and how to get them) or damaged. Downloads nothing.
    Exit codes: 0 no file damaged; 2 a damaged file (named on stderr) or bad input.
    """
    from cvmf_ray.config import GridConfig
    from cvmf_ray.datasets import DATASETS

    root = Path(data_root or GridConfig.model_fields["data_root"].default).expanduser()
    if prepare is not None:
        spec = DATASETS.get(prepare)
        if spec.prepare is None:
            preparable = ", ".join(n for n in DATASETS.names() if DATASETS.get(n).prepare)
            raise UsageError(f"--prepare: {prepare!r} has no local package to lay out from (only: {preparable})")
        spec.prepare(root)
    reports = [DATASETS.get(name).inspect(root) for name in DATASETS.names()]
    for report in reports:
        echo(f"{report.dataset:13}{report.state:9}{report.summary()}")
    damaged = [r for r in reports if r.state == "damaged"]
    if damaged:
        raise UsageError(
            damaged[0].defect() + (f" (and {len(damaged) - 1} more damaged datasets)" if damaged[1:] else "")
        )


def _existing_run(run_dir: str):
    from cvmf_ray.store import RunStore

    store = RunStore(run_dir)
    if not store.file_exists("grid.json"):
        raise UsageError(f"{run_dir!r} is not a cvmf-ray run directory (no grid.json)")
    return store


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: bad input is one line on stderr and 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv or ["--help"], standalone_mode=False)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except typer.Exit as exit_:
        code = exit_.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        code = 130
    except typer.TyperException as err:  # the parser's own errors: wrong type, unknown option, ...
        print(f"error: {err.format_message()}{_given_value(argv, err)}", file=sys.stderr)
        code = 2
    except Exception as err:  # a bug, not bad input: one line, the traceback only on request
        if os.environ.get("CVMF_RAY_DEBUG"):
            raise
        print(f"internal error: {type(err).__name__}: {err} (set CVMF_RAY_DEBUG=1 for the traceback)", file=sys.stderr)
        code = 1
    return code or 0


def _given_value(argv: list[str], err: Exception) -> str:
    """The raw token the user gave for the option the parser rejected, so the message names it."""
    options = getattr(getattr(err, "param", None), "opts", None) or []
    for i, token in enumerate(argv):
        for option in options:
            if token == option and i + 1 < len(argv):
                return f" (got {argv[i + 1]!r})"
            if token.startswith(option + "="):
                return f" (got {token.split('=', 1)[1]!r})"
    return ""


def main() -> None:
    """Console entry point."""
    code = run_cli()
    # Leave without interpreter teardown: torch's and pyarrow's native thread pools race there and
    # abort ("terminate called without an active exception") once in a few runs. Ray is already shut down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
