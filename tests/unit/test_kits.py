"""Model kits: parsing, start-up checks that name missing models, and the deterministic tiny kit."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipelines.models.kits import KitError, ensure_tiny_kit, load_kit
from pipelines.models.tiny_kit import TINY_KIT_VERSION, build_tiny_kit


def _tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, monkeypatch_module):
    cache = tmp_path_factory.mktemp("kits")
    monkeypatch_module.setenv("FLUXMUSIC_KIT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_tiny_kit_builds_deterministically(tmp_path):
    a = _tree_hash(build_tiny_kit(tmp_path / "a"))
    b = _tree_hash(build_tiny_kit(tmp_path / "b"))
    assert {"vae/config.json", "t5/model.safetensors", "clap/preprocessor_config.json", "llm/tokenizer.json",
            "kit.json"} <= set(a)
    assert a == b


def test_ensure_tiny_kit_is_built_once_and_race_safe(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_kit(tmp_path), range(2)))
    assert paths[0] == paths[1] == tmp_path / "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temp folders left behind
    stamp = (tmp_path / "tiny" / "vae" / "config.json").stat().st_mtime_ns
    ensure_tiny_kit(tmp_path)
    assert (tmp_path / "tiny" / "vae" / "config.json").stat().st_mtime_ns == stamp
    # An outdated build is replaced.
    (tmp_path / "tiny" / "kit.json").write_text('{"version": -1}')
    ensure_tiny_kit(tmp_path)
    assert f'"version": {TINY_KIT_VERSION}' in (tmp_path / "tiny" / "kit.json").read_text()


def test_tiny_kit_round_trips_through_from_pretrained(tiny_cache):
    kit = load_kit("tiny").check()
    assert kit.name == "tiny" and kit.vae.path == "tiny://vae"
    vae = kit.load_vae()
    assert vae.config.scaling_factor == pytest.approx(0.4110932946205139)
    x = torch.randn(1, 1, 1024, 64)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        assert dist.mean.shape == (1, 8, 256, 16)
        again = type(vae).from_pretrained(str(tiny_cache / "tiny" / "vae")).eval()
        assert torch.equal(again.encode(x).latent_dist.mean, dist.mean)
    t5, tok = kit.load_t5()
    ids = tok(["rock guitar", ""])["input_ids"]
    assert ids[1] == [1] and ids[0][-1] == 1 and tok.pad_token_id == 0   # T5 ids: eos 1, pad 0
    llm, llm_tok = kit.load_llm()
    prompt = llm_tok.apply_chat_template([{"role": "user", "content": "describe"}], add_generation_prompt=True,
                                         tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert 3e5 < sum(p.numel() for p in llm.parameters()) < 2e6
    out = llm.generate(**llm_tok(prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(llm_tok(prompt)["input_ids"])


def test_load_kit_by_path_and_missing_models_are_all_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    (tmp_path / "vocoder").mkdir()
    kit_file = tmp_path / "mine.yaml"
    kit_file.write_text(
        "vae: {path: ./no-such-vae}\n"
        "vocoder: {path: ./vocoder}\n"                        # exists: not reported
        "t5: {path: nobody/not-cached-t5, dtype: bfloat16}\n"
        "clap: {path: 'tiny://clap'}\n"
        "llm: {path: 'pkg://no_such_package_xyz'}\n")
    kit = load_kit(str(kit_file))
    assert kit.name == "mine" and kit.root == tmp_path and kit.t5.dtype == "bfloat16"
    with pytest.raises(KitError) as err:
        kit.check()
    msg = str(err.value)
    assert "3 model(s) missing" in msg
    assert "no-such-vae" in msg and "nobody/not-cached-t5" in msg and "no_such_package_xyz" in msg
    assert "vocoder" not in msg and "clap" not in msg
    kit.check(["vocoder", "clap"])  # only the roles a stage needs


def test_malformed_or_unknown_kits_fail_clearly(tmp_path):
    with pytest.raises(KitError, match="not found.*shipped kits"):
        load_kit("no-such-kit")
    bad = tmp_path / "bad.yaml"
    bad.write_text("vae: {path: x, dtype: int8}\nvocoder: {path: x, colour: red}\nt5: x\nclap: x\n")
    with pytest.raises(KitError) as err:
        load_kit(str(bad))
    assert "dtype 'int8'" in str(err.value) and "colour" in str(err.value) and "'llm' needs a 'path'" in str(err.value)


def test_shipped_kits_parse():
    paper = load_kit("paper")
    assert (paper.vae.path, paper.vae.subfolder, paper.vocoder.subfolder) == ("cvssp/audioldm2-music", "vae", "vocoder")
    assert paper.t5.dtype == "bfloat16" and paper.vae.dtype == "float32" and paper.clap.path == "laion/larger_clap_music"
    cpu = load_kit("cpu-real")
    assert cpu.t5.path.startswith("pkg://") and cpu.llm.gguf_file and cpu.llm.chat_template
