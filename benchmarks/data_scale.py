"""How the data layer scales: wall time and peak memory of a short run on a large synthetic task.

    python benchmarks/data_scale.py [--rows 100000 1000000 10000000] [--out runs/data-scale]

For each row count it writes (once, reused later) an SST-style TSV -- a
25-character hex id, a sentence of ~25 MiniLM tokens, a label 0..4 -- and
runs ``mtbert run`` on it with the tiny 2-layer encoder (``train.steps = 5``,
no dev file), so the time and memory measured are the data's:

- ``first``: a cold tokenized cache (an empty MTBERT_CACHE): read, check,
  tokenize and write the cache, then train;
- ``cached``: the same run again: the cache entry is mapped.

Each run reports its wall time, the time from start until training begins
(the "... on cpu: ..." line), and the peak resident set size of the process
(``wait4``'s ru_maxrss). ``--peer REV`` adds the same runs with the code of
git revision REV (e.g. the commit before the array-backed data) for a ratio
on the same machine. Results go to ``<out>/data-scale.json`` and a table on
stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the a movie film plot actor scene story it was is and of very quite rather good bad dull "
         "brilliant slow funny moving cast director script ending music charming tedious "
         "performance visual heart characters dialogue pacing").split()

SPEC = """name = "scale"
seed = 1
[encoder]
name = "minbert"
pretrained = "minilm-l6"
init = "random"
num_layers = 2
hidden_size = 32
num_heads = 2
intermediate_size = 64
[data]
dir = "{dir}"
max_length = 64
[train]
steps = 5
batch_size = 32
save_every = 0
[tasks.sst]
data = {{ train = "{file}" }}
head = {{ name = "classifier", num_labels = 5 }}
loss = "cross_entropy"
metrics = ["accuracy"]
"""


def synthetic_tsv(path: Path, rows: int, seed: int = 0) -> None:
    """SST's columns (an unnamed index, id, sentence, label) with ~25 tokens per sentence."""
    if path.is_file():
        return
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fp:
        fp.write("\tid\tsentence\tlabel\n")
        for i in range(rows):
            words = " ".join(rng.choices(WORDS, k=rng.randint(15, 30)))
            fp.write(f"{i}\t{rng.getrandbits(100):025x}\t{words} .\t{rng.randrange(5)}\n")
    tmp.rename(path)


def measure(command: list[str], env: dict, log: Path, cwd: Path = ROOT) -> dict:
    """Run ``command``; its wall time, seconds until training began, the data's own seconds
    (the "data ready in" line) and peak RSS in GB."""
    start = time.perf_counter()
    began = data = None
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            out.write(line)
            if began is None and " on cpu: " in line:
                began = time.perf_counter() - start
            if "data ready in " in line:
                data = float(line.split("data ready in ")[1].split(" s")[0])
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}")
    return {"wall_s": round(wall, 2), "training_began_s": round(began, 2) if began else None, "data_s": data,
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}


def memory_of(pid: int) -> dict[str, int] | None:
    """Rss, Pss and private bytes of a process from /proc/<pid>/smaps_rollup (None once it is gone)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except (OSError, ValueError):
        return None
    kb = lambda name: int(fields.get(name, "0 kB").split()[0]) * 1024  # noqa: E731
    return {"rss": kb("Rss"), "pss": kb("Pss"), "private": kb("Private_Clean") + kb("Private_Dirty")}


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def torchrun_memory(spec: Path, cache: Path, out: Path, rows: int) -> dict:
    """Two processes under torchrun on a fresh cache: the entry is built once (by the first rank)
    and mapped by both; the peak RSS, PSS and private memory of each, sampled every 0.1 s."""
    shutil.rmtree(cache, ignore_errors=True)
    run_dir = out / f"run-{rows}-torchrun"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "MTBERT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mtbert", "run", str(spec), "--no-progress", "--out", str(run_dir),
               "--set", "train.steps=40"]
    peaks: dict[int, dict[str, int]] = {}
    with open(out / f"{rows}-torchrun.log", "w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            for worker in children(process.pid):
                now = memory_of(worker)
                if now:
                    peak = peaks.setdefault(worker, now)
                    for k in now:
                        peak[k] = max(peak[k], now[k])
            time.sleep(0.1)
    if process.returncode != 0:
        raise SystemExit(f"torchrun failed ({process.returncode}); see {out / f'{rows}-torchrun.log'}")
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    gb = lambda b: round(b / 2**30, 3)  # noqa: E731
    return {"cache_entries": len(entries),
            "cache_gb": gb(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())),
            "ranks": [{k: gb(v) for k, v in m.items()} for _, m in sorted(peaks.items())]}


def peer_tree(rev: str, out: Path) -> Path:
    tree = out / f"peer-{rev}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "data-scale")
    parser.add_argument("--peer", metavar="REV", help="also run git revision REV's code (no cache there)")
    parser.add_argument("--torchrun", action="store_true",
                        help="instead: two torchrun processes on the first --rows task, their memory")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "data-scale.json").read_text()) if (out / "data-scale.json").is_file() else {}
    if args.torchrun:
        rows = args.rows[0]
        synthetic_tsv(out / "data" / f"sst-like-{rows}.tsv", rows)
        spec = out / f"scale-{rows}.toml"
        spec.write_text(SPEC.format(dir=out / "data", file=f"sst-like-{rows}.tsv"))
        results[f"torchrun {rows}"] = record = torchrun_memory(spec, out / f"cache-{rows}-torchrun", out, rows)
        (out / "data-scale.json").write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(record, indent=1))
        return
    for rows in args.rows:
        data = out / "data"
        data.mkdir(exist_ok=True)
        name = f"sst-like-{rows}.tsv"
        print(f"{rows} rows: writing {name} (once)", flush=True)
        synthetic_tsv(data / name, rows)
        spec = out / f"scale-{rows}.toml"
        spec.write_text(SPEC.format(dir=data, file=name))
        cache = out / f"cache-{rows}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "MTBERT_CACHE": str(cache), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        command = [sys.executable, "-m", "mtbert", "run", str(spec), "--no-progress"]
        record = {}
        for phase in ("first", "cached"):
            run_dir = out / f"run-{rows}-{phase}"
            shutil.rmtree(run_dir, ignore_errors=True)
            record[phase] = measure([*command, "--out", str(run_dir)], env, out / f"{rows}-{phase}.log")
            print(f"  {phase}: {record[phase]}", flush=True)
        record["cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        if args.peer:
            tree = peer_tree(args.peer, out)
            # the peer's own plugins too: a mtbert_plugins link ahead of the editable install's mapping
            (out / "peer-path").mkdir(exist_ok=True)
            link = out / "peer-path" / "mtbert_plugins"
            if not link.exists():
                link.symlink_to(tree / "plugins")
            peer_env = {**env, "PYTHONPATH": f"{tree}{os.pathsep}{out / 'peer-path'}"}
            run_dir = out / f"run-{rows}-peer"
            shutil.rmtree(run_dir, ignore_errors=True)
            # run from the peer's tree: ``python -m`` puts the working directory first on the path
            record[f"peer {args.peer}"] = measure([*command, "--out", str(run_dir)], peer_env,
                                                  out / f"{rows}-peer.log", cwd=tree)
            print(f"  peer {args.peer}: {record[f'peer {args.peer}']}", flush=True)
        results[str(rows)] = record
        (out / "data-scale.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| rows | run | wall time | training began | of which data | peak RSS |\n|---|---|---|---|---|---|")
    for rows, record in results.items():
        if rows.startswith("torchrun"):
            continue
        for phase, m in record.items():
            if isinstance(m, dict):
                print(f"| {int(rows):,} | {phase} | {m['wall_s']:.1f} s | {m['training_began_s']} s | "
                      f"{m.get('data_s')} s | {m['peak_rss_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
