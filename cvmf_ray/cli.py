"""`cvmf-ray`: expand model × dataset × method × quant lists into a Ray Tune grid, run it, report it.

    cvmf-ray grid                       # the embedded default (digits), on this machine
    cvmf-ray grid --config configs/fashionmnist-resnet18.yaml --gpus 4
    cvmf-ray status results/default
    cvmf-ray results results/default --format csv
    cvmf-ray export results/default --mlflow http://127.0.0.1:5000

Exit codes: 0 all cells ok; 1 some cells failed (the rest finished and were saved); 2 bad input or a wrong
environment; 130 / 143 interrupted by Ctrl-C / SIGTERM (rerun to resume).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cvmf_ray.errors import Interrupted, UsageError

app = typer.Typer(
    help="Can vision models forget, and does the forgetting survive quantization? A Ray Tune sweep runner.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

GRID, TUNING, RESOURCES, OUTPUT = "Grid", "Tuning", "Resources", "Output"


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
    bn_reestimate: Annotated[
        str | None,
        _option(
            "Comma-separated deployment steps that re-estimate BatchNorm statistics before each quant mode: none, "
            "train (the whole training set), retain (after deletion), test (held-out images of the retained "
            "classes) (default none)."
        ),
    ] = None,
    unlearn_bn: Annotated[
        str | None,
        _option(
            "Comma-separated BatchNorm modes while a method unlearns: train (as the method has it), frozen "
            "(running statistics untouched, affine parameters trained): the BN-frozen control (default train)."
        ),
    ] = None,
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
    address: Annotated[
        str | None,
        _option(
            "Join this Ray cluster (HOST:PORT) instead of starting one; gives up after 25 s with what to check "
            "(a token-authenticated cluster needs RAY_AUTH_MODE=token here).",
            RESOURCES,
        ),
    ] = None,
    results_dir: Annotated[
        str | None,
        _option(
            "Results folder or URI (default results): a path, file:///abs/path or s3://bucket/prefix "
            "(?endpoint_override=HOST:PORT for S3-compatible stores); checked before anything runs.",
            OUTPUT,
        ),
    ] = None,
    name: Annotated[
        str | None, _option("Run name: the run lives in RESULTS_DIR/NAME (default default).", OUTPUT)
    ] = None,
    max_failures: Annotated[int | None, _option("Retries of a failing trial (default 1).", RESOURCES)] = None,
    dry_run: Annotated[bool, _option("Print the expanded grid and run nothing.", OUTPUT)] = False,
    resume: Annotated[bool, _option("Reuse an existing run's finished cells (default on).", OUTPUT)] = True,
    dashboard: Annotated[bool, _option("Start Ray's dashboard on 127.0.0.1.", RESOURCES)] = False,
    tune: Annotated[
        str | None,
        _option(
            "Comma-separated methods to tune against retrain, or 'all' (every unlearning method of --methods): one "
            "Optuna (TPE) study per model, dataset, forget set and method, scored on a validation split held out of "
            "the training set; the chosen values run as METHOD@tuned on the seeds not tuned on (default none).",
            TUNING,
        ),
    ] = None,
    tune_trials: Annotated[
        int | None, _option("Trials per tuning study, the same for every method (default 20).", TUNING)
    ] = None,  # fmt: skip
    tune_seeds: Annotated[
        str | None, _option("Comma-separated seeds the searches run on (default: the first of --seeds).", TUNING)
    ] = None,
    relearn: Annotated[
        bool | None,
        _option(
            "Also measure each model's relearn time: steps of fine-tuning on 32 forget images until it "
            "recognises the forgotten class again (default off; relearn_params in YAML tune it)."
        ),
    ] = None,
    verbose: Annotated[bool, _option("One line per finished cell, and the trials' own output.", OUTPUT)] = False,
    mlflow: Annotated[
        str | None,
        _option(
            "Log each evaluated model to this MLflow tracking server (http://HOST:PORT) as it finishes, in the "
            "experiment MLFLOW_EXPERIMENT_NAME (default cvmf-ray); needs the mlflow extra. A server that is down "
            "is one warning: the grid goes on, and `cvmf-ray export` sends what is missing.",
            OUTPUT,
        ),
    ] = None,
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
        bn_reestimate=bn_reestimate,
        unlearn_bn=unlearn_bn,
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
        relearn=relearn,
        tune_methods=tune,
        tune_trials=tune_trials,
        tune_seeds=tune_seeds,
    )
    expanded = expand_grid(cfg)
    if mlflow is not None:
        from cvmf_ray.tracking import check

        check(mlflow)
    if dry_run:
        _print_dry_run(expanded)
        return
    raise typer.Exit(_run(cfg, expanded, resume, verbose, mlflow))


def _run(cfg, expanded, resume: bool, verbose: bool, mlflow: str | None = None) -> int:
    from cvmf_ray import driver
    from cvmf_ray.datasets import DATASETS
    from cvmf_ray.lock import RunLock
    from cvmf_ray.runner import RunStopped, Signals, StopSignal, probe_cluster
    from cvmf_ray.schema import NOT_APPLICABLE
    from cvmf_ray.store import RunStore, StorageFull, run_location

    Signals.install()
    store = RunStore(run_location(cfg.results_dir, cfg.name))
    for dataset in cfg.datasets:
        DATASETS.get(dataset).check_available(cfg.data_root)
    if cfg.address:
        probe_cluster(cfg.address)
    store.probe_writable()
    if not resume and store.file_exists("grid.json"):
        raise UsageError(f"run {store.uri!r} already exists and --no-resume was given; choose another --name")
    stop = StopSignal()
    lock = RunLock(store, on_lost=stop.lose_lock)
    note = lock.acquire()
    if note:
        echo(note)
    started, outcome, live = time.perf_counter(), None, None
    try:
        if mlflow is not None:
            from cvmf_ray.tracking import LiveLog

            live = LiveLog(mlflow, store, expanded.digest, echo)
        outcome = driver.run(cfg, expanded, store, echo, verbose, stop, on_row=live.row if live else None)
    except Interrupted as err:
        kept = getattr(err, "summary", "every finished cell is kept")
        print(
            f"interrupted by {signal.Signals(err.signum).name}: {kept}; run the same command to resume", file=sys.stderr
        )
        return 128 + err.signum
    except (StorageFull, RunStopped) as err:
        kept = getattr(err, "summary", "nothing partial was written")
        echo(f"error: {err}; {kept}: fix that and rerun the same command to resume")
        return 1
    finally:
        lock.release()
        if live is not None:
            live.close(outcome.table if outcome else None)
    rows = [r for r in outcome.table.to_pylist() if r["status"] != NOT_APPLICABLE]  # no cells: nothing to run
    failed = [r for r in rows if r["status"] != "ok"]
    echo(
        f"finished in {time.perf_counter() - started:.1f} s: {len(rows) - len(failed)} of {len(rows)} evaluations ok"
        f" -> {store.display('results.parquet')}"
    )
    for row in failed[:10]:
        echo(f"  failed: {row['method']}/{row['quant']} ({row['key']}): {row['error']}")
    return 1 if failed else 0


def _print_dry_run(expanded) -> None:
    summary = expanded.to_json()["counts"]
    echo("cells per stage: " + ", ".join(f"{stage} {n}" for stage, n in summary.items() if n))
    if expanded.skipped:
        echo(f"{len(expanded.skipped)} combinations do not apply (no cells; rows say why)")
    for cell in expanded.cells.values():
        parent = cell.parent or "-"
        echo(f"{cell.stage:10} {cell.key}  parent {parent:16}  {cell.describe()}")


@app.command()
def status(run_dir: Annotated[str, typer.Argument(help="A run directory (RESULTS_DIR/NAME) or URI.")]) -> None:
    """Cells done / failed / pending per stage, read from storage without running anything (and without the
    run's lock: it works while a grid runs)."""
    from cvmf_ray.driver import read_grid
    from cvmf_ray.grid import STAGES
    from cvmf_ray.scheduler import Scheduler

    store = _readable_run(run_dir)
    grid = read_grid(store)
    listing = store.listing()
    scheduler = Scheduler(grid, listing.done & grid.cells.keys())
    for key in (listing.failed & grid.cells.keys()) - listing.done:
        scheduler.mark_failed(key, "")  # and what reads it is blocked: failed too, as in the results table
    counts = scheduler.counts()
    echo(f"{'stage':10}{'done':>6}{'failed':>8}{'pending':>9}")
    for stage in STAGES:
        c = counts[stage]
        if sum(c.values()):
            echo(f"{stage:10}{c['done']:>6}{c['failed']:>8}{c['pending']:>9}")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def results(
    run_dir: Annotated[str, typer.Argument(help="A run directory (RESULTS_DIR/NAME) or URI.")],
    format: Annotated[Format, typer.Option(help="table (a readable summary), csv or json (every column).")] = (
        Format.table
    ),
    aggregate: Annotated[
        bool, typer.Option(help="Mean ± 95% CI over seeds and forget sets per (model, dataset, method, quant).")
    ] = False,
) -> None:
    """Print a run's results table (rebuilt from the run's files when results.parquet is damaged)."""
    store = _readable_run(run_dir)
    table = _read_table(store)
    if aggregate:
        from cvmf_ray.report import aggregate as aggregated
        from cvmf_ray.report import format_aggregate

        stats = aggregated(table)
        if format is Format.table:
            echo(format_aggregate(stats))
        else:
            _print_records(stats.to_dict("records"), list(stats.columns), format)
    elif format is Format.table:
        from cvmf_ray.report import format_rows

        echo(format_rows(table))
    else:
        _print_records(table.to_pylist(), table.column_names, format)


def _print_records(records: list[dict], columns: list[str], format: Format) -> None:
    if format is Format.json:
        echo(json.dumps(records, indent=1, default=str))
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory (RESULTS_DIR/NAME) or URI.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for report.html, figures/ and tables/ (default RUN_DIR/report).")
    ] = None,
) -> None:
    """Write report.html (self-contained), figures (PNG + PDF) and tables (CSV, Markdown, LaTeX) from a run's
    results.parquet: means with 95% intervals over seeds and forget sets, recovery heatmaps, per-class views;
    with the run's tuning.parquet, each tuning study's trials and its tuned against published values.

    Example: cvmf-ray report results/default && open results/default/report/report.html
    """
    store = _readable_run(run_dir)
    if out is None and store.fs.type_name != "local":
        raise UsageError(f"{run_dir!r} is not a local folder: give --out DIR for the report")
    from cvmf_ray.report import write_report

    table, tuning = _read_table(store), _read_tuning(store)
    files = write_report(table, out or Path(store.path("report")), title=run_dir, tuning=tuning)
    echo(f"wrote {files[0]} and {len(files) - 1} figure and table files")


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(help="A run directory (RESULTS_DIR/NAME) or URI.")],
    mlflow: Annotated[str, typer.Option(help="The MLflow tracking server: http(s)://HOST[:PORT].", show_default=False)],
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default MLFLOW_EXPERIMENT_NAME, else cvmf-ray).")
    ] = None,
) -> None:
    """Log a run's results to MLflow: one MLflow run per row of its table (failed and pending rows included),
    nested under one run per grid that holds the report's figures. Idempotent: the cell key is a row's identity,
    so a second export sends only what changed, and it completes what `grid --mlflow` logged live.

    Example: cvmf-ray export results/default --mlflow http://127.0.0.1:5000

    Exit codes: 0 exported; 2 bad input, mlflow not installed, or a server that is unreachable or refuses.
    """
    from cvmf_ray.tracking import check
    from cvmf_ray.tracking import export as export_run

    check(mlflow)
    store = _readable_run(run_dir)
    echo(export_run(store, _read_table(store), _read_tuning(store), mlflow, experiment))


def _readable_run(run_dir: str):
    from cvmf_ray.store import RunStore

    store = RunStore(run_dir)
    store.probe_readable()
    return store


def _read_table(store):
    from cvmf_ray.driver import read_table

    return read_table(store, lambda message: print(message, file=sys.stderr))


def _read_tuning(store):
    from cvmf_ray.driver import read_tuning

    return read_tuning(store, lambda message: print(message, file=sys.stderr))


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
    except Interrupted as err:  # a signal before or after the run itself (during it, _run says more)
        print(f"interrupted by {signal.Signals(err.signum).name}: rerun the same command to resume", file=sys.stderr)
        code = 128 + err.signum
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
    """The raw token the user gave for the option the parser rejected, so the message names it. Of an option
    given twice it is the last: the one click keeps (a later option overrides an earlier one) and so the one
    it failed to convert."""
    options = getattr(getattr(err, "param", None), "opts", None) or []
    for i, token in reversed(list(enumerate(argv))):
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
