"""Third-party plugins: docs/plugins.md covers every hook and interface, and the
example package (examples/plugin_package) installs and works like a real one.

The package test builds the package for real (a wheel, not editable) into a
FRESH virtual environment that sees this environment's packages through a
.pth file, so torch is not installed again and mtbert exists exactly once
(installing mtbert a second time would register its entry points twice).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import attrs
import pytest

from mtbert import hookspecs, structure
from mtbert.model.build import REQUIRED
from mtbert.plugin.interfaces import Encoded, LabelSpec, ParamGroup, SamplerContext
from mtbert.plugin.registry import NAME_RE

from helpers import ROOT, TINY_ENCODER


DOC = ROOT / "docs" / "plugins.md"
PACKAGE = ROOT / "examples" / "plugin_package"
DIST = "mtbert-focal"


# -- docs/plugins.md ---------------------------------------------------------------------------

def hookspec_functions() -> dict[str, object]:
    """Every function of mtbert/plugin/hookspecs.py marked as a hookspec (pluggy sets ``mtbert_spec``)."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, marker)}


def sections(text: str) -> dict[str, str]:
    """'### register_<kind>' -> the text up to the next heading of level 1 to 3."""
    found = {}
    parts = re.split(r"^(#{1,3} .*)$", text, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2]):
        match = re.fullmatch(r"### (register_\w+)\s*", heading)
        if match:
            found[match.group(1)] = body
    return found


def test_every_hookspec_has_its_own_section():
    specs = hookspec_functions()
    assert "register_losses" in specs and len(specs) >= 11  # the marker lookup finds the hooks
    assert set(specs) == set(hookspecs.KIND_HOOKS.values()) | set(hookspecs.LEGACY_HOOKS)
    documented = sections(DOC.read_text())
    missing = sorted(set(specs) - set(documented))
    assert not missing, f"docs/plugins.md has no '### <hook>' section for {missing}"
    for name, fn in specs.items():
        params = list(inspect.signature(fn).parameters)
        assert f"def {name}({', '.join(params)})" in documented[name], f"{name}'s signature is not shown"


def test_every_required_attribute_is_documented_in_its_kinds_section():
    text = DOC.read_text()
    documented = sections(text)
    assert set(REQUIRED) == set(hookspecs.KIND_HOOKS)
    for kind, required in REQUIRED.items():
        section = documented[hookspecs.KIND_HOOKS[kind]]
        assert f"`REQUIRED[\"{kind}\"]`" in section, kind
        for attribute in required:
            assert f"`{attribute}`" in section, f"{kind}: `{attribute}` is required but not in its section"
        # ... and the summary table lists exactly the same attributes, in order
        row = f"| {kind} | " + ", ".join(f"`{a}`" for a in required) + " |"
        assert row in text, f"the REQUIRED table's row for {kind} differs from mtbert.model.build.REQUIRED"


def test_docs_name_the_real_interface_pieces():
    text = DOC.read_text()
    for cls in (LabelSpec, SamplerContext, ParamGroup):
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in text, f"{cls.__name__}.{field.name}"
    for field in Encoded._fields:
        assert f"`{field}`" in text, f"Encoded.{field}"
    for validator in ("at_least", "greater_than", "in_range", "probability", "non_empty"):
        assert callable(getattr(structure, validator))
        assert f"`{validator}" in text, validator
    assert f"`{NAME_RE.pattern}`" in text  # the name rule, exactly as the registry checks it


# -- the example package in a fresh virtual environment -----------------------------------------

WORDS = "the a movie film plot actor scene story it was is and of very quite rather".split()


def course_like_data(directory: Path, n: int = 48, seed: int = 0) -> Path:
    """Tiny files with the course's names and columns (the example spec's data.dir)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)

    def sentence(k=5):
        return " ".join(rng.sample(WORDS, k))

    def write(name, header, rows):
        lines = ["\t" + "\t".join(header)] + [f"{i}\t" + "\t".join(map(str, row)) for i, row in enumerate(rows)]
        (directory / name).write_text("\n".join(lines) + "\n")

    for split in ("train", "dev"):
        write(f"ids-sst-{split}.csv", ["id", "sentence", "sentiment"],
              [(f"s{split}{i}", sentence(), i % 5) for i in range(n)])
        write(f"quora-{split}.csv", ["id", "sentence1", "sentence2", "is_duplicate"],
              [(f"q{split}{i}", sentence(), sentence(), f"{i % 2}.0") for i in range(n)])
        write(f"sts-{split}.csv", ["id", "sentence1", "sentence2", "similarity"],
              [(f"t{split}{i}", sentence(), sentence(), f"{rng.uniform(0, 5):.1f}") for i in range(n)])
    write("ids-sst-test-student.csv", ["id", "sentence"], [(f"st{i}", sentence()) for i in range(8)])
    write("sts-test-student.csv", ["id", "sentence1", "sentence2"],
          [(f"tt{i}", sentence(), sentence()) for i in range(8)])
    return directory


def fresh_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A new venv (no pip of its own) that sees this environment's site-packages; (python, site-packages)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # addsitedir (not a bare path line) so the parent's own .pth files run too: mtbert's
    # editable install is a .pth-installed import finder.
    (site / "_parent_env.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in parents))
    return python, site


def test_example_package_installs_and_works_in_a_fresh_venv(tmp_path):
    # The new venv borrows this environment's pip and setuptools (scripts/setup.sh's venv has both).
    for tool in ("pip", "setuptools"):
        if importlib.util.find_spec(tool) is None:
            pytest.skip(f"{tool} is not installed in this environment; the package cannot be built")
    python, site = fresh_venv(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MTBERT_DATA", "MTBERT_LOAD_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")

    def call(*args, cwd=tmp_path, extra=None, ok=True):
        result = subprocess.run([str(a) for a in args], cwd=cwd, env={**env, **(extra or {})},
                                capture_output=True, text=True, timeout=300)
        if ok:
            assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result

    # A real build (in a copy: pip builds in the source tree, leaving build/ and egg-info behind).
    source = tmp_path / "mtbert-focal-src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                                   ".pytest_cache"))
    call(python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--no-input", "-q", source)
    # pip writes a console script for each installed package; mtbert is not installed in this
    # venv (it is seen through the .pth), so give the venv the same launcher pip would.
    launcher = python.parent / "mtbert"
    launcher.write_text(f"#!{python}\nimport sys\nfrom mtbert.commands.cli import main\nsys.exit(main())\n")
    launcher.chmod(0o755)

    # Where everything comes from, seen from the new venv.
    probe = call(python, "-c", """if True:
        import json, mtbert, mtbert_focal
        from importlib import metadata
        dist = metadata.distribution("mtbert-focal")
        print(json.dumps({
            "mtbert": mtbert.__file__, "mtbert_focal": mtbert_focal.__file__,
            "mtbert_dists": sum(d.metadata["Name"] == "mtbert" for d in metadata.distributions()),
            "mse_entry_points": [ep.value for ep in metadata.entry_points(group="mtbert")].count(
                "mtbert_plugins.losses.mse"),
            "direct_url": json.loads(dist.read_text("direct_url.json") or "{}"),
        }))""")
    where = json.loads(probe.stdout)
    assert Path(where["mtbert"]).resolve() == ROOT / "mtbert" / "__init__.py"
    assert Path(where["mtbert_focal"]).resolve().is_relative_to(site.resolve())  # installed, not the source
    assert where["mtbert_dists"] == 1 and where["mse_entry_points"] == 1
    assert not where["direct_url"].get("dir_info", {}).get("editable", False)

    # mtbert plugins --json: both components, from the package, and nothing failed.
    listing = json.loads(call(launcher, "plugins", "--json").stdout)
    rows = {(c["kind"], c["name"]): c for c in listing["components"]}
    assert listing["failures"] == []
    assert rows[("losses", "focal")]["package"] == DIST
    assert rows[("losses", "focal")]["plugin"] == "mtbert_focal.losses"
    assert rows[("gradients", "rlw")]["package"] == DIST
    assert rows[("gradients", "rlw")]["plugin"] == "mtbert_focal.gradients"
    assert rows[("losses", "mse")]["package"] == "mtbert"
    assert len(listing["components"]) == len(rows)  # no component listed twice

    # mtbert validate: the package's example spec (on course-like files), and the step contract.
    data = course_like_data(tmp_path / "data")
    example = PACKAGE / "example.toml"
    valid = call(launcher, "validate", example, extra={"MTBERT_DATA": str(data)})
    assert "ok (3 task(s): sst, para, sts; sampler all_tasks, gradient rlw)" in valid.stdout
    refused = call(launcher, "validate", example, "--set", "sampler=round_robin",
                   extra={"MTBERT_DATA": str(data)}, ok=False)
    assert refused.returncode == 2
    assert "gradient: \"rlw\" combines every task's gradient" in refused.stderr
    assert 'sampler = "all_tasks" or sampler = "proportional_joint"' in refused.stderr

    # mtbert run: the example spec on a tiny random encoder, one epoch of 3 steps.
    overrides = [f"encoder.{key}={json.dumps(value)}" for key, value in TINY_ENCODER.items() if key != "name"]
    overrides += ["data.max_length=32", "train.epochs=1", "train.batch_size=16", "train.threads=1",
                  "train.log_every=1"]
    out = tmp_path / "run"
    call(launcher, "run", example, "--out", out, "--no-progress",
         *[arg for o in overrides for arg in ("--set", o)], extra={"MTBERT_DATA": str(data)})
    best = json.loads((out / "best.json").read_text())
    assert set(best["tasks"]) == {"sst", "para", "sts"} and best["step"] == 3
    resolved = tomllib.loads((out / "spec.toml").read_text())
    assert resolved["gradient"] == {"name": "rlw", "seed": 0, "total": "tasks"}
    assert resolved["tasks"]["sst"]["loss"] == {"name": "focal", "gamma": 2.0}
    assert resolved["tasks"]["para"]["loss"] == {"name": "focal", "gamma": 2.0}
    assert (out / "checkpoint" / "model.safetensors").is_file()

    # The package's own tests, with the new venv's python, against the installed package.
    tests = call(python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 PACKAGE.relative_to(ROOT) / "tests", cwd=ROOT, ok=False)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    passed = re.search(r"(\d+) passed", tests.stdout)
    assert passed and int(passed.group(1)) >= 20 and "failed" not in tests.stdout
