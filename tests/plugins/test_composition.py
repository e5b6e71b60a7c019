"""Any balancer with any gradient method, with an adapter and a regularizer, in one spec: each
pairing below is validated and trained a few steps on the tiny encoder, and every part of it
is seen to act (the adapter's weights, the balancer's state and the model all move)."""

from __future__ import annotations

import pytest
import torch

from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec

PAIRS = [("uncertainty", "pcgrad"), ("famo", "cagrad"), ("imtl_l", "imtl"), ("dwa", "nash_mtl"), ("gradnorm", "pcgrad"),
         ("gls", "aligned_mtl"), ("rlw", "db_mtl"), ("uncertainty", "graddrop"), ("famo", "mgda"),
         ("uncertainty", "mgda_ub")]
EXTRAS = {
    "pals": {"adapters": [{"name": "pals"}]},
    "smart": {"regularizers": [{"name": "smart", "sigma": 1e-3, "epsilon": 1e-3}]},
}


@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("balancer, gradient", PAIRS, ids=[f"{b}+{g}" for b, g in PAIRS])
def test_balancer_gradient_method_and_extra_train_together(registry, tmp_path, balancer, gradient, extra):
    data = unstructure(toy_spec(registry, toy_data(tmp_path / "data", n=32), steps=4, batch_size=8, log_every=2))
    data.update(sampler="all_tasks", balancer=balancer, gradient=gradient, **EXTRAS[extra])
    spec = structure_spec(data, registry)  # validates
    trainer = Trainer(spec, registry, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    balancer_before = {k: v.clone() for k, v in trainer.balancers.modules[balancer].named_parameters()}
    trainer.fit(RunDir.create(spec, str(tmp_path / "run")))
    after = trainer.model.state_dict()
    assert trainer.step == 4
    assert all(torch.isfinite(v).all() for v in after.values())
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert any("encoder" in k for k in moved) and any("head" in k for k in moved)
    if extra == "pals":
        assert any("pals" in k for k in moved), "the adapter did not train"
    learned = dict(trainer.balancers.modules[balancer].named_parameters())
    assert learned.keys() == balancer_before.keys()
    assert all(not torch.equal(learned[k], balancer_before[k]) for k in learned)  # learnable ones learned
