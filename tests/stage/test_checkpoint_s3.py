"""Format-2 (DCP) checkpoints without Ray or a process group: save/restore round trip in one process, then the
folder on the loopback S3 server read back by load_state, exported as a release to S3, and loaded for sampling."""
from __future__ import annotations

import os

import torch

from pipelines import storage


def _state(seed: int):
    from model import build_model
    from pipelines.training.config import TrainConfig
    from pipelines.training.state import TrainState

    cfg = TrainConfig(size="tiny", seed=seed)
    torch.manual_seed(seed)
    base = build_model("tiny", context_in_dim=16, vec_in_dim=8)
    optimizer = torch.optim.AdamW(base.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    names = [n for n, _ in base.named_parameters()]
    return TrainState(cfg=cfg, rank=0, world=1, device=torch.device("cpu"), model=base, base=base,
                      optimizer=optimizer, scheduler=scheduler, generator=torch.Generator().manual_seed(seed),
                      ema=[p.detach().clone() + 1 for p in base.parameters()], names=names,
                      null_t5=torch.zeros(1, 16), null_clap=torch.zeros(8), t5_dim=16, clap_dim=8,
                      scaling_factor=0.5, kit="tiny", accumulation=1)


def test_dcp_checkpoint_round_trip_and_s3_release(s3_server, tmp_path):
    from pipelines.runs.checkpoints import STATE_FILE, load_state
    from pipelines.runs.release import read_release_weights
    from pipelines.runs.weights import (
        export_release,
        load_checkpoint_state,
        model_from_checkpoint,
    )
    from pipelines.training.checkpoint import (
        restore_checkpoint,
        save_checkpoint,
    )

    a = _state(1)
    loss = sum(p.square().sum() for p in a.model.parameters())
    loss.backward()
    a.optimizer.step()
    a.scheduler.step()
    a.step, a.epoch, a.consumed, a.history = 1, 0, 1, [(1.0, 0.5)]
    folder = tmp_path / "checkpoint_step_00000001"
    folder.mkdir()
    save_checkpoint(a, str(folder))
    assert {p.name for p in folder.iterdir()} == {STATE_FILE, "dcp", "rng_rank0.pt"}

    b = _state(2)                                          # other weights, other RNG: all overwritten
    restore_checkpoint(b, str(folder))
    assert (b.step, b.epoch, b.consumed, b.history) == (1, 0, 1, [(1.0, 0.5)])
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    assert all(torch.equal(x, y) for x, y in zip(a.ema, b.ema))
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert torch.equal(a.optimizer.state_dict()["state"][0]["exp_avg"], b.optimizer.state_dict()["state"][0]["exp_avg"])

    later = tmp_path / "async"                             # dcp.async_save: the same files once the future is done
    later.mkdir()
    save_checkpoint(a, str(later), asynchronous=True).result()
    c = _state(3)
    restore_checkpoint(c, str(later))
    assert all(torch.equal(x, y) for x, y in zip(a.ema, c.ema)) and c.step == 1

    remote = s3_server.uri(f"ckpt-{os.getpid()}", folder.name)
    for path in folder.rglob("*"):
        if path.is_file():
            storage.write_bytes_atomic(storage.join(remote, str(path.relative_to(folder))), path.read_bytes())
    full = load_state(remote)                              # downloaded, shards merged into full state dicts
    assert full["step"] == 1 and set(full["ema"]) == set(a.names)
    assert torch.equal(full["ema"][a.names[0]], a.ema[0])
    assert load_checkpoint_state(remote)["model_config"]["kit"] == "tiny"
    model, info = model_from_checkpoint(remote, "ema")     # read straight from the shards
    assert info["vae_scaling_factor"] == 0.5 and torch.equal(model.state_dict()[a.names[0]], a.ema[0])

    release = s3_server.uri(f"release-{os.getpid()}")
    config = export_release(remote, release)
    assert config["step"] == 1 and config["context_in_dim"] == 16
    assert torch.equal(read_release_weights(release, "model")[a.names[0]], a.model.state_dict()[a.names[0]])
    released, _ = model_from_checkpoint(release, "ema")
    assert torch.equal(released.state_dict()[a.names[-1]], a.ema[-1])
