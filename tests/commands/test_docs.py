"""The docs match the code: the spec reference is generated, the README's commands are CI's."""

from __future__ import annotations

import attrs

from mtbert.commands.specdoc import CORE, own_registry, render

from helpers import ROOT



def test_spec_reference_is_up_to_date():
    expected = render(own_registry())
    actual = (ROOT / "docs" / "spec.md").read_text()
    assert actual == expected, "docs/spec.md is stale: run `python -m mtbert.commands.specdoc > docs/spec.md`"


def test_every_core_key_is_described():
    for cls, (_, descriptions) in CORE.items():
        names = {f.name for f in attrs.fields(cls)}
        assert names == set(descriptions), cls.__name__
        assert all(text.strip() for text in descriptions.values())


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == "scripts/setup.sh test && .venv/bin/python -m pytest"
    assert f"    {ci}\n" in readme
    assert "    scripts/setup.sh && MTBERT_DATA=../shared/data/cs224n .venv/bin/mtbert run examples/baseline.toml\n" \
        in readme
