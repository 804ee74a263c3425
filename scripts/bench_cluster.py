"""Makespan of a sleep-based 32-cell grid on a Ray cluster with 4 declared GPUs vs 1 (target: <= 0.3x).

    python scripts/bench_cluster.py

Starts a local one-node cluster (`ray start --head`, 8 CPUs, N declared GPUs, token auth), runs
32 unlearn cells of a plug-in method that sleeps 2 s (8 forget classes x 4 seeds, 1-epoch originals)
with one GPU per trial, and measures the unlearn wave's makespan: first nap start to last nap end, from
the cells' own timestamps. Tune trials per wave = cells batched into as many trials as fit at once.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
NAP = "import time\n\n\ndef nap(model, data, params):\n    time.sleep(2)\n    return model\n"
GRID = ["--methods", "bench_nap:nap", "--forget-classes", "0,1,2,3,4,5,6,7", "--seeds", "0,1,2,3"]
GRID += ["--quant", "fp32", "--epochs", "1", "--gpus-per-trial", "1"]


def run_on(gpus: int, workdir: Path) -> tuple[float, float]:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(workdir)}
    port = "6391"
    start = [RAY, "start", "--head", f"--port={port}", "--num-cpus=8", f"--num-gpus={gpus}"]
    subprocess.run([*start, "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    try:
        results = workdir / f"gpus{gpus}"
        cli = [shutil.which("cvmf-ray") or "cvmf-ray", "grid", "--address", f"127.0.0.1:{port}"]
        started = time.perf_counter()
        run = subprocess.run([*cli, "--results-dir", str(results), *GRID], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if run.returncode != 0:
            sys.exit(f"grid failed on {gpus} GPU(s):\n{run.stdout}\n{run.stderr}")
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
    naps = [json.loads(p.read_text()) for p in results.glob("default/artifacts/*/meta.json")]
    spans = [m["interval"] for m in naps if m["stage"] == "unlearn"]
    assert len(spans) == 32, len(spans)
    return max(b for _, b in spans) - min(a for a, _ in spans), wall


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    (workdir / "bench_nap.py").write_text(NAP)
    one, one_wall = run_on(1, workdir)
    four, four_wall = run_on(4, workdir)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; cluster: 1 node, 8 declared CPUs")
    print(f"32 sleep cells (2 s each), 1 GPU per trial: unlearn-wave makespan on 1 GPU {one:.1f} s "
          f"(grid wall {one_wall:.1f} s), on 4 GPUs {four:.1f} s (grid wall {four_wall:.1f} s)")  # fmt: skip
    print(f"ratio 4 GPUs / 1 GPU: {four / one:.2f}x (target <= 0.3x)")
    shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
