"""Shared test helpers: run the real CLI in-process and capture what a user would see."""

import json
from pathlib import Path

import pytest

from cvmf_ray.cli import run_cli


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit code, stdout, stderr), through the same entry point as the console script."""

    def run(*args: str):
        code = run_cli([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def metas(run_dir: Path) -> dict[str, dict]:
    """Every finished cell's meta.json in a run directory, by key."""
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("artifacts/*/meta.json")}
