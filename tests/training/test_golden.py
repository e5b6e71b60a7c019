"""The redesigned loop trains exactly as the loop before it (issue 12).

tests/fixtures/golden/weights.json was written by ``python tests/golden_runs.py``
with the loop of commit c55c1be; each case trains again here and must give the
same dev metrics and the same weights: per-tensor sums of squares to 1e-5
relative, and sums to 1e-4 absolute (a sum cancels: attention key biases, whose
gradient is zero up to rounding since the softmax ignores them, sum to 1e-7 of
pure rounding, which differs between an Intel and an AMD CPU). Rounding on
another CPU passes; a changed step, which moves weights by ~1e-3 each, does not.
"""

from __future__ import annotations

import json
import math

import pytest

from mtbert.training.loop import train

from golden_runs import CASES, GOLDEN, run_case


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_weights_as_before_the_redesign(registry, tmp_path, case):
    expected = json.loads(GOLDEN.read_text())[case]
    got = run_case(registry, case, tmp_path, lambda s, r, d: train(s, r, d, progress=False))
    assert [m["step"] for m in got["metrics"]] == [m["step"] for m in expected["metrics"]]
    for g, e in zip(got["metrics"], expected["metrics"]):
        assert close(g["overall"], e["overall"]), (g, e)
    assert got["weights"].keys() == expected["weights"].keys()
    off = [k for k, (s, q) in got["weights"].items()
           if not (math.isclose(s, expected["weights"][k][0], rel_tol=0, abs_tol=1e-4)
                   and math.isclose(q, expected["weights"][k][1], rel_tol=1e-5, abs_tol=1e-9))]
    assert not off, f"{len(off)} tensors differ, e.g. {off[:3]}"
