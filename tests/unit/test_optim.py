"""build_optimizer: AdamW with the given hyperparameters, fused only on CUDA."""
from __future__ import annotations

import pytest
import torch

from pipelines.training.optim import build_optimizer


def test_cpu_optimizer_is_plain_adamw_with_the_hyperparameters():
    layer = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(layer.parameters(), lr=2e-4, weight_decay=0.01, device_type="cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["lr"] == 2e-4 and group["weight_decay"] == 0.01
    assert not group["fused"]
    assert len(group["params"]) == 2


def test_cpu_step_matches_torch_adamw():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    b.load_state_dict(a.state_dict())
    ours = build_optimizer(a.parameters(), lr=1e-2, weight_decay=0.1, device_type="cpu")
    reference = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(8, 4)
    for model, optimizer in ((a, ours), (b, reference)):
        for _ in range(3):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_cuda_device_type_asks_for_fused():
    # Built on CPU tensors only to read the flag: a fused step would need CUDA params.
    layer = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(layer.parameters(), lr=1e-4, weight_decay=0.0, device_type="cuda")
    assert optimizer.param_groups[0]["fused"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_step_runs_on_cuda():
    layer = torch.nn.Linear(3, 2).cuda()
    optimizer = build_optimizer(layer.parameters(), lr=1e-3, weight_decay=0.0, device_type="cuda")
    layer(torch.randn(4, 3, device="cuda")).sum().backward()
    before = layer.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, layer.weight)
