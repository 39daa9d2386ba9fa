"""Model kits: parsing, start-up checks that name missing models, and the deterministic tiny kit."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipelines.models.kits import ROLES, KitError, ensure_tiny_kit, load_kit
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
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "vocoder" / name).write_text("{}")
    kit_file = tmp_path / "mine.yaml"
    kit_file.write_text(
        "vae: {path: ./no-such-vae}\n"
        "vocoder: {path: ./vocoder}\n"                        # config + weights: complete, not reported
        "t5: {path: nobody/not-cached-t5, dtype: bfloat16}\n"
        "clap: {path: 'tiny://clap'}\n"
        "llm: {path: 'pkg://no_such_package_xyz'}\n")
    kit = load_kit(str(kit_file))
    assert kit.name == "mine" and kit.root == tmp_path and kit.t5.dtype == "bfloat16"
    with pytest.raises(KitError) as err:
        kit.check(["vae", "vocoder", "t5", "llm"])
    msg = str(err.value)
    assert "3 model(s) missing" in msg
    assert "no-such-vae" in msg and "nobody/not-cached-t5" in msg and "no_such_package_xyz" in msg
    assert "config.json" in msg and "HF_HUB_OFFLINE=1" in msg     # a hub id: the files it lacks in the cache
    assert "vocoder" not in msg
    kit.check(["vocoder"])  # only the roles a stage needs


def _copy_role(tiny_cache, role: str, dest: Path) -> Path:
    import shutil

    ensure_tiny_kit(tiny_cache)
    shutil.copytree(tiny_cache / "tiny" / role, dest)
    return dest


def _kit_file(folder: Path, **roles: str) -> str:
    lines = [f"{role}: {{path: '{roles.get(role, 'tiny://' + role)}'}}" for role in ROLES]
    (folder / "kit.yaml").write_text("\n".join(lines) + "\n")
    return str(folder / "kit.yaml")


def test_check_names_a_missing_weight_file(tiny_cache, tmp_path):
    t5 = _copy_role(tiny_cache, "t5", tmp_path / "t5")
    kit = load_kit(_kit_file(tmp_path, t5=str(t5)))
    kit.check(["t5"])                                    # complete: passes
    (t5 / "model.safetensors").unlink()
    with pytest.raises(KitError) as err:
        kit.check()
    msg = str(err.value)
    assert "1 model(s) missing" in msg and f"t5: {t5}" in msg
    assert "weights" in msg and "model.safetensors" in msg and "tokenizer" not in msg


def test_check_names_a_missing_tokenizer_and_feature_extractor(tiny_cache, tmp_path):
    clap = _copy_role(tiny_cache, "clap", tmp_path / "clap")
    (clap / "tokenizer.json").unlink()
    (clap / "preprocessor_config.json").unlink()
    with pytest.raises(KitError) as err:
        load_kit(_kit_file(tmp_path, clap=str(clap))).check(["clap"])
    msg = str(err.value)
    assert "clap:" in msg and "preprocessor_config.json" in msg
    assert "tokenizer in ./ (one of: tokenizer.json | vocab.json + merges.txt)" in msg and "weights" not in msg


def test_check_names_a_missing_shard_of_a_sharded_checkpoint(tiny_cache, tmp_path):
    llm = _copy_role(tiny_cache, "llm", tmp_path / "llm")
    (llm / "model.safetensors").rename(llm / "model-00001-of-00002.safetensors")
    (llm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(KitError) as err:
        load_kit(_kit_file(tmp_path, llm=str(llm))).check(["llm"])
    assert "weight shards model-00002-of-00002.safetensors" in str(err.value)
    assert "model-00001-of-00002" not in str(err.value)


def test_s3_keys_that_leave_the_cache_are_refused(tmp_path, monkeypatch):
    from pipelines import storage
    from pipelines.models.paths import download_s3, relative_key

    assert relative_key("s3://b/kit/vae/config.json", "s3://b/kit") == "vae/config.json"
    for bad in ("s3://b/kit/../evil", "s3://b/kit/vae/../../evil", "s3://b/kit//etc/passwd", "s3://b/kit/a\\..\\b",
                "s3://b/other/x"):
        with pytest.raises(KitError):
            relative_key(bad, "s3://b/kit")
    monkeypatch.setenv("FLUXMUSIC_KIT_CACHE", str(tmp_path / "cache"))
    written = []
    monkeypatch.setattr(storage, "list_files", lambda prefix, *a: [f"{prefix}/config.json", f"{prefix}/../../../x"])
    monkeypatch.setattr(storage, "read_bytes", lambda key: written.append(key) or b"{}")
    with pytest.raises(KitError, match="outside the kit cache"):
        download_s3("s3://b/kit")
    assert written == []                                   # refused before anything was written
    assert not list((tmp_path / "cache").rglob("config.json")) and not (tmp_path / "x").exists()


def test_load_prints_missing_and_unexpected_keys(capsys):
    from pipelines.models.kits import print_load_warning

    assert print_load_warning("clap: x", {"missing_keys": set(), "unexpected_keys": set()}) == []
    lines = print_load_warning("clap: x", {"missing_keys": {f"text_model.k{i}" for i in range(10)},
                                           "unexpected_keys": {"extra"}})
    assert lines[0].startswith("clap: x: 10 missing keys: text_model.k0") and "(10 in all)" in lines[0]
    assert lines[1] == "clap: x: 1 unexpected keys: extra"
    assert "[kit] clap: x: 10 missing keys" in capsys.readouterr().out


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


def test_paper_shaped_kit_mirrors_the_paper_kit_and_the_spec():
    from pipelines.models import paper_shaped as ps

    paper, shaped = load_kit("paper"), load_kit("paper-shaped")
    for role in ROLES:                      # same loaders, subfolders and dtypes; only the path differs
        a, b = getattr(paper, role), getattr(shaped, role)
        assert (a.subfolder, a.dtype, a.tokenizer_subfolder) == (b.subfolder, b.dtype, b.tokenizer_subfolder), role
        assert b.kind == "built" and b.built() == ("paper-shaped", a.path.split("/")[1]), role
    assert ps.VAE_CONFIG["latent_channels"] == 8 and ps.VAE_CONFIG["scaling_factor"] == 0.4110932946205139
    assert ps.VOCODER_CONFIG["upsample_rates"] == [5, 4, 2, 2, 2] and ps.VOCODER_CONFIG["model_in_dim"] == 64
    t5 = ps.T5_CONFIG
    assert (t5["d_model"], t5["num_heads"], t5["d_kv"], t5["d_ff"], t5["vocab_size"]) == (4096, 64, 64, 10240, 32128)
    assert t5["feed_forward_proj"] == "gated-gelu" and t5["relative_attention_num_buckets"] == 32
    assert ps.CLAP_TEXT_CONFIG["hidden_size"] == 768 and ps.CLAP_AUDIO_CONFIG["depths"] == [2, 2, 12, 2]
    llm = ps.LLM_CONFIG
    assert (llm["hidden_size"], llm["intermediate_size"], llm["num_attention_heads"], llm["num_key_value_heads"],
            llm["vocab_size"]) == (3584, 18944, 28, 4, 152064)
    assert len(ps.QWEN_SPECIALS + ps.QWEN_NON_SPECIAL) == 22 and llm["eos_token_id"] == 151645
    assert len(ps._t5_pieces()) == ps.T5_PIECES - 3 == 31997
