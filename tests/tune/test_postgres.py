"""Two workers share one study through a real PostgreSQL server, as two machines would: each its own
`mtbert tune` process and study directory, one database URL and study name. The test starts its own
throwaway server (initdb and pg_ctl in a temporary directory; .ci/run installs PostgreSQL where it
is missing)."""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import tune_files


def server_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture
def postgres_url():
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed here (.ci/run installs it: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (in mtbert[test])")
    as_root = os.geteuid() == 0  # the server refuses to run as root: it runs as the postgres user then
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
    home = Path(tempfile.mkdtemp(prefix="mtbert-pg-"))
    if as_root:
        os.chown(home, owner.pw_uid, owner.pw_gid)
    user = "postgres" if as_root else getpass.getuser()

    def as_server(*argv):
        command = [str(binaries / argv[0]), *argv[1:]]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    with socket.socket() as s:  # a free port number (also names the server's socket file)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    made = as_server("initdb", "-D", str(home / "data"), "-U", user, "--auth=trust")
    assert made.returncode == 0, made.stdout + made.stderr
    started = as_server("pg_ctl", "-D", str(home / "data"), "-l", str(home / "log"), "-w", "-o",
                        f"-p {port} -k {home} -c listen_addresses=''", "start")
    assert started.returncode == 0, started.stdout + started.stderr + (home / "log").read_text()
    try:
        yield f"postgresql://{user}@/postgres?host={home}&port={port}"
    finally:
        as_server("pg_ctl", "-D", str(home / "data"), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_one_study_through_postgresql(registry, tmp_path, postgres_url):
    spec, space = tune_files(tmp_path, registry, 'trials = 6\nsampler = "random"\npruner = "none"\n'
                        '[params."train.lr"]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n',
                        steps=16, eval_every=8)
    commands = [[sys.executable, "-m", "mtbert", "tune", str(spec), "--space", str(space), "--storage",
                 postgres_url, "--study", "shared", "--out", str(tmp_path / f"machine-{i}")] for i in (1, 2)]
    workers = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)

    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(len(trials))) and len(trials) >= 6
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 6  # each worker may start one more
    hosts = {t.user_attrs["host"] for t in trials}
    assert len(hosts) == 2, outputs  # both machines trained trials of the one study
    for i in (1, 2):  # each machine's trials in its own directory, its results written from the whole study
        directory = tmp_path / f"machine-{i}"
        mine = [t for t in trials if (directory / t.user_attrs["run"] / "best.json").is_file()]
        assert mine and (directory / "summary.jsonl").read_text().count("\n") == len(trials)
