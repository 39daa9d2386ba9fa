"""Rectified flow (spec §5): patchify order, ids, loss, Euler + CFG sampler, and a tiny model that learns."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model import (
    build_model,
    latent_ids,
    pad_text,
    patchify,
    rectified_flow_loss,
    sample,
    unpatchify,
    velocity,
)
from model.sampler import cfg_batch

CTX, VEC = 24, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(nn.Module):
    """Stands in for FluxMusic: records its inputs and returns a fixed velocity."""

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.value = value
        self.calls = []

    def forward(self, img, img_ids, txt, txt_ids, txt_mask, y, timesteps):
        self.calls.append(dict(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, txt_mask=txt_mask, y=y,
                               t=timesteps))
        return torch.full_like(img, self.value)


def conditions(batch: int, length: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"txt": torch.randn(batch, length, CTX, generator=g), "txt_mask": torch.ones(batch, length, dtype=bool),
            "y": torch.randn(batch, VEC, generator=g)}


def test_patchify_token_and_feature_order():
    c, h, w = torch.meshgrid(torch.arange(8), torch.arange(256), torch.arange(16), indexing="ij")
    latent = (c * 10_000 + h * 100 + w).float()[None]          # value encodes (channel, time, mel)
    tokens = patchify(latent)
    assert tokens.shape == (1, 1024, 32)
    for row, col, ch, ph, pw in [(0, 0, 0, 0, 0), (0, 1, 0, 0, 0), (1, 0, 0, 0, 0), (127, 7, 7, 1, 1),
                                 (5, 3, 2, 1, 0), (9, 6, 4, 0, 1)]:
        token, feature = row * 8 + col, ch * 4 + ph * 2 + pw
        assert tokens[0, token, feature].item() == ch * 10_000 + (2 * row + ph) * 100 + (2 * col + pw)
    torch.testing.assert_close(unpatchify(tokens), latent)


def test_unpatchify_inverts_patchify_on_random_latents():
    x = torch.randn(3, 8, 256, 16)
    torch.testing.assert_close(unpatchify(patchify(x)), x, rtol=0, atol=0)
    small = torch.randn(2, 8, 32, 16)
    torch.testing.assert_close(unpatchify(patchify(small), 16, 8), small, rtol=0, atol=0)


def test_latent_ids_are_zero_row_col():
    ids = latent_ids(2)
    assert ids.shape == (2, 1024, 3)
    assert ids[0, 0].tolist() == [0, 0, 0]
    assert ids[1, 8 * 5 + 3].tolist() == [0, 5, 3]
    assert ids[0, -1].tolist() == [0, 127, 7]
    assert (ids[..., 0] == 0).all()


def test_pad_text():
    a, b = torch.randn(3, 4), torch.randn(5, 4)
    txt, mask = pad_text([a, b])
    assert txt.shape == (2, 5, 4) and mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    torch.testing.assert_close(txt[0, :3], a)
    assert (txt[0, 3:] == 0).all()
    torch.testing.assert_close(txt[1], b)


def test_loss_uses_logit_normal_t_linear_path_and_velocity_target():
    x0 = torch.randn(2, 8, 256, 16)
    cond = conditions(2, 4)
    recorder = Recorder(value=0.0)
    loss, t = rectified_flow_loss(recorder, x0, cond, generator=torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)                # the same draws, in the same order
    expected_t = torch.sigmoid(torch.randn(2, generator=g))
    noise = torch.randn(2, 1024, 32, generator=g)
    x = patchify(x0)
    torch.testing.assert_close(t, expected_t)
    call = recorder.calls[0]
    torch.testing.assert_close(call["t"], expected_t)
    torch.testing.assert_close(call["img"], (1 - expected_t[:, None, None]) * x + expected_t[:, None, None] * noise)
    assert call["txt_ids"].shape == (2, 4, 3) and (call["txt_ids"] == 0).all()
    torch.testing.assert_close(call["img_ids"], latent_ids(2))
    # model predicts 0, so the loss is the per-sample mean of (eps - x)^2
    torch.testing.assert_close(loss, (noise - x).pow(2).mean(dim=(1, 2)))
    assert loss.shape == (2,)


def test_tiny_model_overfits_a_handful_of_latents():
    torch.manual_seed(0)
    model = build_model("tiny", context_in_dim=CTX, vec_in_dim=VEC)
    # four fixed latents (a per-channel level over a shorter clip: 8x8 = 64 tokens keeps this fast)
    x0 = torch.randn(4, 8, 1, 1).expand(4, 8, 16, 16).contiguous()
    cond = conditions(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        loss, _ = rectified_flow_loss(model, x0, cond, generator=generator)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.mean().item())
    initial, final = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    print(f"overfit: initial loss {initial:.3f}, final {final:.3f}, ratio {final / initial:.3f}")
    assert final < 0.3 * initial


def test_sampler_time_grid_and_euler_update():
    noise = torch.randn(2, 8, 256, 16)
    recorder = Recorder(value=0.5)                      # constant velocity: x0 = noise - 0.5 exactly
    out = sample(recorder, noise, conditions(2, 4), None, steps=4)
    assert out.shape == noise.shape
    torch.testing.assert_close(out, noise - 0.5)
    assert [c["t"][0].item() for c in recorder.calls] == [1.0, 0.75, 0.5, 0.25]    # never t = 0


def test_cfg_scale_one_skips_the_unconditional_pass():
    recorder = Recorder()
    sample(recorder, torch.randn(2, 1024, 32), conditions(2, 4), conditions(1, 2), steps=2, cfg_scale=1.0)
    assert [c["img"].shape[0] for c in recorder.calls] == [2, 2]


def test_cfg_batch_pads_both_sides_and_broadcasts_null():
    cond, uncond = conditions(3, 5), conditions(1, 2, seed=1)
    batch = cfg_batch(cond, uncond)
    assert batch["txt"].shape == (6, 5, CTX) and batch["y"].shape == (6, VEC)
    assert batch["txt_mask"][:3].all()
    assert batch["txt_mask"][3:].tolist() == [[True, True, False, False, False]] * 3
    torch.testing.assert_close(batch["txt"][4, :2], uncond["txt"][0])


def test_batched_cfg_equals_two_separate_passes():
    torch.manual_seed(0)
    model = build_model("tiny", context_in_dim=CTX, vec_in_dim=VEC).eval()
    noise = torch.randn(2, 8, 256, 16)
    cond = conditions(2, 5)
    cond["txt_mask"][1, 3:] = False                     # a padded conditional row too
    uncond = conditions(1, 2, seed=1)
    steps, scale = 3, 3.5
    batched = sample(model, noise, cond, uncond, steps=steps, cfg_scale=scale)

    uncond_b = {k: v.expand(2, *v.shape[1:]) for k, v in uncond.items()}
    z = patchify(noise)
    with torch.no_grad():
        for i in range(steps, 0, -1):
            t = torch.full((2,), i / steps)
            v_c, v_u = velocity(model, z, t, cond), velocity(model, z, t, uncond_b)
            z = z - (v_u + scale * (v_c - v_u)) / steps
    torch.testing.assert_close(batched, unpatchify(z), atol=1e-4, rtol=0)
    assert not torch.allclose(batched, sample(model, noise, cond, uncond, steps=steps, cfg_scale=1.0), atol=1e-3)


def test_sampler_under_bf16_autocast_with_fp16_text():
    torch.manual_seed(0)
    model = build_model("tiny", context_in_dim=CTX, vec_in_dim=VEC).eval()
    cond = {k: v.half() if v.is_floating_point() else v for k, v in conditions(2, 4).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample(model, torch.randn(2, 8, 16, 16), cond, conditions(1, 1, seed=1), steps=2)
    assert out.shape == (2, 8, 16, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_pad_to_bucket_lengths_and_mask():
    from model import pad_to_bucket

    txt = torch.randn(2, 40, CTX)
    mask = torch.tensor([[True] * 40, [True] * 10 + [False] * 30])
    padded, padded_mask = pad_to_bucket(txt, mask)
    assert padded.shape == (2, 64, CTX) and padded_mask.shape == (2, 64)
    torch.testing.assert_close(padded[:, :40], txt)
    assert not padded[:, 40:].any() and not padded_mask[:, 40:].any()
    assert torch.equal(padded_mask[:, :40], mask)
    # exactly a bucket: unchanged; None becomes all True; past the last bucket: a multiple of it
    same, same_mask = pad_to_bucket(torch.randn(1, 32, CTX), None)
    assert same.shape[1] == 32 and same_mask.all()
    assert pad_to_bucket(torch.randn(1, 300, CTX), None)[0].shape[1] == 512
    assert pad_to_bucket(torch.randn(1, 5, CTX), None, buckets=(8, 16))[0].shape[1] == 8


def test_bucket_padding_keeps_real_token_outputs():
    from model import pad_to_bucket

    torch.manual_seed(0)
    model = build_model("tiny", context_in_dim=CTX, vec_in_dim=VEC).eval()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 1024, 32, generator=g)
    t = torch.rand(2, generator=g)
    txt = torch.randn(2, 20, CTX, generator=g)
    mask = torch.tensor([[True] * 20, [True] * 7 + [False] * 13])
    y = torch.randn(2, VEC, generator=g)
    reference = velocity(model, z, t, {"txt": txt, "txt_mask": mask, "y": y})
    padded_txt, padded_mask = pad_to_bucket(txt, mask)
    assert padded_txt.shape[1] == 32
    bucketed = velocity(model, z, t, {"txt": padded_txt, "txt_mask": padded_mask, "y": y})
    torch.testing.assert_close(bucketed, reference, atol=1e-5, rtol=1e-5)
    # an unpadded batch too: its all-True mask becomes a real mask after bucketing, same outputs
    full = velocity(model, z, t, {"txt": txt, "y": y})
    full_bucketed = velocity(model, z, t, dict(zip(("txt", "txt_mask"), pad_to_bucket(txt, None)), y=y))
    torch.testing.assert_close(full_bucketed, full, atol=1e-5, rtol=1e-5)
