"""What every benchmark script records: the machine it ran on, and its JSON result file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path


def machine(threads: int | None = None) -> dict:
    """The platform, CPU count, torch build and thread count, and the GPU if one is visible."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": threads or torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, making the folder; returns the path. Whole or not at all (a
    temporary file renamed over it): a benchmark stopped at its time limit mid-write keeps the last
    complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
    return path


def measure_in_subprocess(command: list[str], name: str) -> tuple[dict | None, float]:
    """Run one measurement's command (offline, tokenizers single-threaded) and read the JSON on its
    ``RESULT`` line: (result, seconds it took); (None, seconds) and its error's tail printed if it failed."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(f"{name}: FAILED\n{done.stderr[-2000:]}", flush=True)
        return None, time.perf_counter() - started
    return json.loads(line[len("RESULT "):]), time.perf_counter() - started
