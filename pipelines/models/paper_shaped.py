"""The `paper-shaped` model kit: the paper kit's exact architectures and configs, random weights, built locally.

Every role is the real model's config (docs/kits.md "The paper-shaped kit" gives each one and its source), saved
in its hub repo's file layout, so `paper-shaped.yaml` loads it with the same loader, subfolder and dtype that
`paper.yaml` uses. Only the depth of the two big text models is cut (T5 v1.1 XXL and Qwen2.5-7B: 1 layer each,
full width) so the kit fits CPU memory; their vocabularies keep the real sizes and special-token ids. Weights are
random (fixed seeds): a run proves shapes, dtypes, tokenizers and the VAE scaling factor, not quality.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch

from pipelines.models.tiny_kit import _SENTENCES, _WORDS

# Bump when anything below changes: a cached build with another version is rebuilt.
PAPER_SHAPED_KIT_VERSION = 1

# Folder names inside the built kit: each mirrors one hub repo (paper.yaml's path of the same role).
REPOS = {"vae": "audioldm2-music", "vocoder": "audioldm2-music", "t5": "t5-v1_1-xxl",
         "clap": "larger_clap_music", "llm": "Qwen2.5-7B-Instruct"}
T5_LAYERS = 1      # real: 24
LLM_LAYERS = 1     # real: 28

# cvssp/audioldm2-music vae/config.json (spec §2; the same as cvssp/audioldm2's)
VAE_CONFIG = dict(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=[128, 256, 512],
                  down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                  layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024,
                  scaling_factor=0.4110932946205139, force_upcast=True)
# cvssp/audioldm2-music vocoder/config.json (SpeechT5HifiGan, spec §2)
VOCODER_CONFIG = dict(model_in_dim=64, sampling_rate=16_000, upsample_initial_channel=1024,
                      upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                      resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3,
                      initializer_range=0.01, leaky_relu_slope=0.1, normalize_before=False)
# google/t5-v1_1-xxl config.json (spec §3), depth cut
T5_CONFIG = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=T5_LAYERS, num_decoder_layers=24,
                 num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="gated-gelu",
                 is_encoder_decoder=True, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                 decoder_start_token_id=0)
T5_PIECES = 32000          # spiece.model pieces; + 100 <extra_id_*> = 32100 tokens; embedding rows 32128
# laion/larger_clap_music config.json: RoBERTa-base text tower + HTSAT-base audio tower (unfused), projection 512
CLAP_TEXT_CONFIG = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
                        layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0, eos_token_id=2, projection_dim=512,
                        projection_hidden_act="relu")
CLAP_AUDIO_CONFIG = dict(depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32], patch_embeds_hidden_size=128,
                         hidden_size=1024, window_size=8, spec_size=256, num_mel_bins=64, patch_size=4,
                         patch_stride=[4, 4], mlp_ratio=4.0, enable_fusion=False, num_classes=527,
                         projection_dim=512, projection_hidden_act="relu", layer_norm_eps=1e-5)
CLAP_PROJECTION_DIM = 512
# ClapFeatureExtractor of laion/larger_clap_music (48 kHz, 64 mel bins, 10 s)
CLAP_FEATURES = dict(feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=10, fft_window_size=1024,
                     frequency_min=50, frequency_max=14_000, truncation="rand_trunc", padding="repeatpad")
# Qwen/Qwen2.5-7B-Instruct config.json, depth cut
LLM_CONFIG = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=LLM_LAYERS,
                  num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=32768,
                  max_window_layers=28, initializer_range=0.02, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                  use_sliding_window=False, sliding_window=131072, attention_dropout=0.0, tie_word_embeddings=False,
                  use_cache=True, bos_token_id=151643, eos_token_id=151645)
# Qwen/Qwen2.5-7B-Instruct generation_config.json
LLM_GENERATION = dict(bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643], do_sample=True,
                      repetition_penalty=1.05, temperature=0.7, top_p=0.8, top_k=20)
# Qwen2.5's added tokens, from id 151643 on (ids below are its 151643 byte-level BPE tokens)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_NON_SPECIAL = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN_FIRST_ADDED = 151643
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
# Qwen2.5-Instruct's chat template (tokenizer_config.json), default system prompt and tool calls included
QWEN_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")


def _text() -> list[str]:
    return _WORDS + _SENTENCES * 4


# ---------------------------------------------------------------- tokenizers

def _t5_pieces() -> list[tuple[str, float]]:
    """T5_PIECES - 3 deterministic SentencePiece pieces: caption words (log frequency), then characters and
    letter n-grams with and without the word-start mark, longer ones scored higher (fewer pieces per word)."""
    words = Counter(w for text in _text() for w in text.lower().split())
    total = sum(words.values())
    pieces: dict[str, float] = {"\u2581": -9.0}
    for w, n in sorted(words.items()):
        pieces["\u2581" + w] = math.log(n / total)
    letters = "abcdefghijklmnopqrstuvwxyz"
    chars = letters + letters.upper() + "0123456789.,;:!?'\"-()/&%#+*=_[]"
    for c in chars:
        pieces.setdefault("\u2581" + c, -13.0)
        pieces.setdefault(c, -14.0)
    grams = [a + b for a in letters for b in letters] + [a + b + c for a in letters for b in letters for c in letters]
    for g in grams:
        for piece in ("\u2581" + g, g):
            if len(pieces) >= T5_PIECES - 3:
                break
            pieces.setdefault(piece, -12.0 + 0.5 * len(g) - (0.25 if piece == g else 0.0))
    return list(pieces.items())[: T5_PIECES - 3]


def _t5_tokenizer(out: Path) -> None:
    """T5 v1.1's tokenizer layout: spiece.model (Unigram, pad 0, eos 1, unk 2, no bos, nmt_nfkc) + configs, no
    tokenizer.json (as google/t5-v1_1-xxl), so loading converts spiece.model with sentencepiece (review P3)."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import T5Tokenizer

    # A throw-away training run only for its normaliser spec (the compiled nmt_nfkc rules); the pieces are ours.
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_text()), model_writer=buffer, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    del proto.pieces[:]
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    for piece, kind in (("<pad>", kinds.CONTROL), ("</s>", kinds.CONTROL), ("<unk>", kinds.UNKNOWN)):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    for piece, score in _t5_pieces():
        proto.pieces.add(piece=piece, score=score, type=kinds.NORMAL)
    proto.trainer_spec.vocab_size = T5_PIECES
    proto.trainer_spec.input[:] = []
    proto.trainer_spec.model_prefix = ""
    (out / "spiece.model").write_bytes(proto.SerializeToString())
    T5Tokenizer(vocab_file=str(out / "spiece.model"), extra_ids=100, model_max_length=512).save_pretrained(out)
    (out / "tokenizer.json").unlink(missing_ok=True)      # the hub repo has only spiece.model
    if not (out / "spiece.model").exists():
        raise RuntimeError("T5 tokenizer save dropped spiece.model")


def _bpe(vocab_size: int, pre_tokenizer, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_text(), trainer=trainer)
    return tok


def _clap_tokenizer(out: Path) -> None:
    """RoBERTa byte-level BPE (<s> 0, <pad> 1, </s> 2, <unk> 3), vocab.json + merges.txt + tokenizer.json."""
    from tokenizers import pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(1000, pre_tokenizers.ByteLevel(add_prefix_space=False), ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=512)
    fast.save_pretrained(out)
    tok.model.save(str(out))                               # vocab.json + merges.txt, as the hub repo has them


def _qwen_tokenizer(out: Path) -> None:
    """Qwen2's byte-level BPE (its split regex, NFC) trained on caption text, padded with unreachable filler
    tokens so that the 22 added tokens sit at Qwen2.5's ids (151643 = <|endoftext|>, 151645 = <|im_end|>)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(1000, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), [])
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), QWEN_FIRST_ADDED):
        vocab[f"<|filler_{i}|>"] = i                     # never produced by a merge: keeps the real ids
    data["added_tokens"] = [
        {"id": QWEN_FIRST_ADDED + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": t in QWEN_SPECIALS}
        for i, t in enumerate(QWEN_SPECIALS + QWEN_NON_SPECIAL)]
    full = Tokenizer.from_str(json.dumps(data))
    fast = PreTrainedTokenizerFast(tokenizer_object=full, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=131072, chat_template=QWEN_CHAT_TEMPLATE, errors="replace",
                                   additional_special_tokens=QWEN_SPECIALS[1:])
    fast.save_pretrained(out)
    full.model.save(str(out))                              # vocab.json + merges.txt beside tokenizer.json


# ---------------------------------------------------------------- models

def _vae(out: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(10)
    AutoencoderKL(**VAE_CONFIG).save_pretrained(out)


def _vocoder(out: Path) -> None:
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(11)
    SpeechT5HifiGan(SpeechT5HifiGanConfig(**VOCODER_CONFIG)).save_pretrained(out)


def _t5(out: Path) -> None:
    from transformers import T5Config, T5EncoderModel

    _t5_tokenizer(out)
    torch.manual_seed(12)
    model = T5EncoderModel._from_config(T5Config(**T5_CONFIG), dtype=torch.bfloat16)
    model.save_pretrained(out)


def _clap(out: Path) -> None:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    _clap_tokenizer(out)
    torch.manual_seed(13)
    config = ClapConfig(text_config=CLAP_TEXT_CONFIG, audio_config=CLAP_AUDIO_CONFIG,
                        projection_dim=CLAP_PROJECTION_DIM)
    ClapModel(config).save_pretrained(out)
    ClapFeatureExtractor(**CLAP_FEATURES).save_pretrained(out)


def _llm(out: Path) -> None:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    _qwen_tokenizer(out)
    torch.manual_seed(14)
    model = Qwen2ForCausalLM._from_config(Qwen2Config(**LLM_CONFIG), dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(**LLM_GENERATION)
    model.save_pretrained(out, max_shard_size="600MB")     # sharded + model.safetensors.index.json, as the hub


BUILDERS = {"vae": _vae, "vocoder": _vocoder, "t5": _t5, "clap": _clap, "llm": _llm}
SUBFOLDERS = {"vae": "vae", "vocoder": "vocoder"}


def role_folder(out: Path, role: str) -> Path:
    return out / REPOS[role] / SUBFOLDERS.get(role, "")


def build_paper_shaped_kit(out_dir: str | Path) -> Path:
    """Write every role into out_dir/<repo>[/<subfolder>]/ plus a kit.json marker; deterministic per version."""
    out = Path(out_dir)
    for role, build in BUILDERS.items():
        folder = role_folder(out, role)
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
    (out / "kit.json").write_text(json.dumps({"name": "paper-shaped", "version": PAPER_SHAPED_KIT_VERSION,
                                              "t5_layers": T5_LAYERS, "llm_layers": LLM_LAYERS}, indent=2))
    return out
