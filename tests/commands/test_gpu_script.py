"""benchmarks/gpu.py, the GPU run of issue 29, dry on the CPU: every stage runs (tiny encoder, a
few steps), the folder holds at most 8 files, and the summary table is the last thing printed.
So a lent GPU's minutes are never lost to a script that does not start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import DATA, ROOT


def test_the_gpu_script_runs_every_stage_on_the_cpu(tmp_path, data_dir):
    out = tmp_path / "gpu"
    env = {**os.environ, "MTBERT_DATA": str(DATA), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--dry",
                           "--out", str(out), "--budget", "400"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for stage in ("cuda tests", "profile", "peers minilm", "mfu", "prepared fixes", "step costs"):
        assert f"{stage}: exit 0" in summary, summary
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    assert {"cuda_tests.log", "profile.txt", "bench-minilm.json", "mfu.json", "fixes.json", "step-costs.json",
            "summary.md"} <= set(files)
    table = summary[summary.index("| measurement"):].strip()
    assert done.stdout.strip().endswith(table)  # printed last
    assert "train examples/s, mtbert / Trainer, MiniLM |" in table and "T = 3" in table
    for fix in ("unpad = true / default, train", "unpad = true / default, eval",
                "CUDA graphs (compile_mode reduce-overhead) / default, train"):
        assert fix in table, fix
    assert "wall_s_per_step" in (out / "profile.txt").read_text()
