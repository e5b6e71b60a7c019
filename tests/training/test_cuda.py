"""The CUDA path: bf16 autocast, fused AdamW, gradient surgery, SMART, reload on CPU, and
training steps that never wait for the GPU.

Skipped where no GPU is visible (CI has none); run on a GPU machine with
``python -m pytest tests/training/test_cuda.py``. Each test compares the GPU against
the CPU fp32 reference or checks a property that a broken path would break.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mtbert.runs.rundir import RunDir
from mtbert.config.spec import structure_spec, unstructure
from mtbert.training.loop import Trainer

from helpers import toy_data, toy_spec, read_metrics, STEP_CASES, step_round


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def cuda_spec(registry, directory, **changes):
    """The toy two-task spec on CUDA; ``changes`` are top-level spec keys (train keys go in ``train``)."""
    data = unstructure(toy_spec(registry, directory, **changes.pop("train", {})))
    data["train"]["device"] = "cuda"
    data.update(changes)
    return structure_spec(data, registry)


def fit(registry, spec, path):
    trainer = Trainer(spec, registry, progress=False)
    best = trainer.fit(RunDir.create(spec, str(path)))
    return trainer, best


def test_bf16_autocast_is_the_default_on_cuda_and_the_model_learns(registry, tmp_path):
    spec = cuda_spec(registry, toy_data(tmp_path / "data"), train={"epochs": 4})
    trainer, best = fit(registry, spec, tmp_path / "run")
    assert trainer.device.type == "cuda" and trainer.autocast.keywords["dtype"] == torch.bfloat16
    # Master weights stay fp32 under autocast: only activations go bf16.
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert best["tasks"]["sent"]["accuracy"] > 0.9
    assert best["tasks"]["count"]["pearson"] > 0.8


def relative(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """|actual - reference| / |reference|, both read in float64."""
    reference = reference.double().cpu()
    return float((actual.double().cpu() - reference).norm() / reference.norm())


def float32_matmul_tolerance() -> float:
    """What fp32 arithmetic lands under against a float64 reference: ~1e-6 relative (1e-5 leaves a
    margin), or ~1e-3 where torch lets matrix products use TF32 (3e-3 leaves a margin)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return 3e-3 if tf32 else 1e-5


def test_cuda_fp32_forward_and_backward_match_a_float64_reference(tiny_encoder):
    """The encoder's fp32 forward and backward on the CPU and on CUDA, each against the same in
    float64 on the CPU, by relative norm: summation order moves fp32 results by ~1e-7 relative, a
    real difference (a wrong mask, a missing scale) by far more. The earlier comparison, 6 SGD
    steps' weights within 1e-5 absolute of the CPU's, failed on an H200 without saying by how much."""
    batch = tiny_encoder.tokenizer(["a good movie", "the plot of the film was bad", "it was quite"],
                                   padding=True, return_tensors="pt")
    torch.manual_seed(0)
    head = torch.nn.Linear(tiny_encoder.hidden_size, 3)

    def forward_backward(device: str, dtype: torch.dtype):
        encoder = copy.deepcopy(tiny_encoder).eval().to(device=device, dtype=dtype)
        top = copy.deepcopy(head).to(device=device, dtype=dtype)
        states = encoder(batch["input_ids"].to(device), batch["attention_mask"].to(device)).states
        loss = top(states.mean(1)).square().sum()
        grads = torch.autograd.grad(loss, list(encoder.parameters()), allow_unused=True)
        return states.detach(), torch.cat([g.flatten() for g in grads if g is not None])

    reference = forward_backward("cpu", torch.float64)
    for device, tolerance in (("cpu", 1e-5), ("cuda", float32_matmul_tolerance())):
        states, grads = forward_backward(device, torch.float32)
        errors = relative(states, reference[0]), relative(grads, reference[1])
        print(f"{device}: states {errors[0]:.2e}, gradients {errors[1]:.2e} relative to float64")
        assert max(errors) <= tolerance, (device, errors)


def test_cuda_fp32_steps_match_the_cpu(registry, tmp_path):
    """fp32 on both devices, dropout off, SGD: six steps' weight updates agree by relative norm (the
    differences are summation order, amplified a little by six steps; the size is printed)."""
    directory = toy_data(tmp_path / "data", n=64)
    weights, start = {}, None
    for device in ("cpu", "cuda"):
        data = unstructure(toy_spec(registry, directory, steps=6, length_buckets=False, precision="fp32"))
        data["train"]["device"] = device
        data["optimizer"] = "sgd"
        data["encoder"].update(dropout=0.0, attention_dropout=0.0)
        spec = structure_spec(data, registry)
        trainer = Trainer(spec, registry, progress=False)
        start = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        trainer.fit(RunDir.create(spec, str(tmp_path / device)))
        weights[device] = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    update = {d: torch.cat([(weights[d][k] - start[k]).double().flatten() for k in start if k in weights[d]])
              for d in weights}
    error = relative(update["cuda"], update["cpu"])
    print(f"six steps' update, CUDA against CPU: {error:.2e} relative")
    assert error <= 10 * float32_matmul_tolerance(), error


def test_adamw_is_fused_on_cuda(registry, tmp_path):
    spec = cuda_spec(registry, toy_data(tmp_path / "data", n=32), train={"steps": 1})
    trainer, _ = fit(registry, spec, tmp_path / "run")
    assert trainer.parts.optimizer.defaults["fused"] is True
    assert all(p.is_cuda for group in trainer.parts.optimizer.param_groups for p in group["params"])


@pytest.mark.parametrize("gradient", ["pcgrad", "gradvac"])
def test_gradient_surgery_under_bf16_trains(registry, tmp_path, gradient):
    spec = cuda_spec(registry, toy_data(tmp_path / "data"), sampler="all_tasks", gradient=gradient,
                     train={"epochs": 4})
    trainer, best = fit(registry, spec, tmp_path / "run")
    assert best["tasks"]["sent"]["accuracy"] > 0.85
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_smart_under_bf16_trains_and_logs_both_terms(registry, tmp_path):
    spec = cuda_spec(registry, toy_data(tmp_path / "data"), regularizers=[{"name": "smart"}],
                     train={"epochs": 3, "log_every": 2})
    trainer, best = fit(registry, spec, tmp_path / "run")
    assert best["tasks"]["sent"]["accuracy"] > 0.85
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    for term in ("adversarial", "bregman"):
        logged = [e.value for e in events.Scalars(f"regularizer/smart/{term}")]
        assert logged and all(v >= 0 for v in logged), term


def test_a_cuda_checkpoint_reloads_on_cpu_with_the_same_predictions(registry, tmp_path):
    import mtbert

    spec = cuda_spec(registry, toy_data(tmp_path / "data"), train={"epochs": 2})
    fit(registry, spec, tmp_path / "run")
    sentences = ["good movie very", "bad plot it was", "the a film good"]
    on_cpu = mtbert.load(tmp_path / "run", device="cpu").predict("sent", sentences)
    on_gpu = mtbert.load(tmp_path / "run", device="cuda").predict("sent", sentences)
    assert on_cpu == on_gpu
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best == max(read_metrics(tmp_path / "run"), key=lambda r: r["overall"])


def test_encoder_on_cuda_matches_cpu(tiny_encoder):
    encoder = tiny_encoder.eval()
    batch = encoder.tokenizer(["a good movie", "the plot of the film was bad"], padding=True,
                              return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        cpu = encoder(ids, mask).states
        encoder.to("cuda")
        try:
            gpu = encoder(ids.cuda(), mask.cuda()).states.cpu()
        finally:
            encoder.to("cpu")
    assert torch.allclose(cpu, gpu, atol=1e-4)


@pytest.mark.parametrize("changes", STEP_CASES.values(), ids=STEP_CASES)
def test_training_steps_never_wait_for_the_gpu(registry, tmp_path, changes):
    """No host-device synchronization in the hot loop: torch's sync debug mode turns any
    (a .item(), a copy from pageable memory, a boolean mask index) into an error.
    (tests/training/test_hot_loop.py checks the same steps, but for the copies, on the CPU.)"""
    trainer = Trainer(cuda_spec(registry, toy_data(tmp_path / "data"), **changes), registry, progress=False)
    steps, per_round = step_round(trainer)
    for _ in range(2):  # warm-up: first allocations, optimizer state, SMART's teacher copy, pinned buffers
        steps()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            steps()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.step == 2 * 2 * per_round


def test_unpadded_encoder_runs_flash_varlen_and_matches_the_padded(registry):
    """minbert's ``unpad`` on the GPU: under bf16, attention without dropout goes through
    FlashAttention's variable-length kernel (the CPU tests cannot reach it); states and every
    gradient agree with the padded encoder's within bf16's precision."""
    from mtbert.config.spec import structure_component
    from mtbert.model.build import make
    from mtbert.toolkit import bert
    from helpers import TINY_ENCODER

    torch.manual_seed(0)
    model = make(registry, structure_component(
        "encoders", {**TINY_ENCODER, "dropout": 0.0, "attention_dropout": 0.0}, registry)).cuda()
    encoded = model.tokenizer(["a good movie", "the plot of the film was bad and far too long", "it"],
                              ["x y", "z", "the a b c d e f"], padding=True, return_tensors="pt")
    ids, mask, types = (encoded[k].cuda() for k in ("input_ids", "attention_mask", "token_type_ids"))
    assert bert.flash_packs(torch.zeros(3, 2, 16, dtype=torch.bfloat16, device="cuda"))
    calls = []
    original = bert.varlen_attn
    bert.varlen_attn = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        results = []
        for unpad in (False, True):
            model.unpad = unpad
            model.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(ids, mask, types)
                loss = (out.states.float() * mask[..., None]).pow(2).sum()
            loss.backward()
            results.append((out.states.float().detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                           if p.grad is not None}))
    finally:
        bert.varlen_attn = original
    assert len(calls) == len(model.layers)  # one packed attention per layer, only when unpadded
    (states, grads), (states_u, grads_u) = results
    real = mask.bool()
    print("relative difference of the states:", relative(states_u[real], states[real]))
    assert relative(states_u[real], states[real]) < 2e-2
    big = [n for n in grads if grads[n].norm() > 1e-3 * max(g.norm() for g in grads.values())]
    worst = max(relative(grads_u[n], grads[n]) for n in big)
    print("worst relative difference of a gradient:", worst)
    assert worst < 5e-2
