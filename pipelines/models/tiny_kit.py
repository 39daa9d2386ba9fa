"""The `tiny` model kit: every role's real class with small, deterministic random weights.

Built in a few seconds from configs (fixed seeds), saved with `save_pretrained`, and then loaded by
`pipelines.models.kits` through exactly the same `from_pretrained(path)` code as real weights. Tokenizers are trained
on a small music-caption word list with the `tokenizers` library.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# Bump when anything below changes: a cached build with another version is rebuilt.
TINY_KIT_VERSION = 2

T5_DIM = 64
CLAP_TEXT_DIM = 32          # text_model pooler_output (the conditioning vector)
CLAP_PROJECTION_DIM = 16    # joint audio/text embedding

_WORDS = """
a an the and with of in on at by for from to into over under slow fast upbeat calm quiet loud soft hard
gentle energetic aggressive mellow dreamy dark bright happy sad melancholic romantic epic cinematic ambient
acoustic electric electronic synth synthesizer piano guitar bass drums drum kit percussion strings violin cello
viola orchestra orchestral brass trumpet trombone horn saxophone sax flute clarinet oboe harp organ choir vocal
vocals voice male female singer singing rap hip hop rock pop jazz blues funk soul reggae metal punk folk country
classical techno house trance dubstep disco latin world lofi chill beat beats groove melody harmony rhythm tempo
bpm key major minor chord chords riff solo loop sample recording live studio lo-fi hi-fi reverb distorted clean
warm cold heavy light deep high low mid bassline kick snare hi-hat cymbal clap shaker tambourine bell bells pad
pads lead arpeggio arpeggiated plucked bowed strummed picked sustained staccato legato crescendo fade intro outro
verse chorus bridge drop build song track piece music instrumental tune noise silence quality low-quality
features plays playing played sounds sounding like this is it has there which that song's emotional relaxing
background atmospheric nostalgic playful mysterious tense peaceful powerful driving steady repetitive simple
complex minimal rich layered sparse dense ukulele banjo mandolin marimba xylophone vibraphone accordion harmonica
sitar tabla koto kalimba steel pan 808 sub wobble glitch vinyl crackle tape hiss rain wind nature birds
""".split()

_SENTENCES = [
    "a calm piano melody with soft strings",
    "an energetic rock song with electric guitar and heavy drums",
    "upbeat electronic dance track with a deep bassline and synth pads",
    "quiet acoustic guitar playing a gentle folk tune",
    "low quality, gentle",
    "this song features a male vocal singing over a funky bass groove",
    "ambient atmospheric pads with reverb and a slow tempo of 70 bpm in a minor key",
    "cinematic orchestral piece with brass, strings and choir",
]


def _corpus() -> list[str]:
    return _WORDS + _SENTENCES * 4


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


# ---------------------------------------------------------------- tokenizers

def _t5_tokenizer(out: Path) -> int:
    """Unigram tokenizer with T5's ids (pad 0, eos 1, unk 2; EOS appended, never BOS), SentencePiece-style
    pieces. Scores are log word frequencies of the caption word list, computed here rather than by the
    tokenizers Unigram trainer, whose order of equal-frequency pieces varies from run to run."""
    from collections import Counter

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    words = Counter(w for text in _corpus() for w in text.lower().split())
    total = sum(words.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -12.0)]
    pieces += [("\u2581" + w, math.log(n / total)) for w, n in sorted(words.items())]
    chars = sorted({c for w in words for c in w})
    pieces += [(c, -14.0) for c in chars] + [("\u2581" + c, -13.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(out)
    return tok.get_vocab_size()


def _bpe_tokenizer(out: Path, *, chat: bool) -> int:
    """Byte-level BPE. RoBERTa-style (<s> 0, <pad> 1, </s> 2) for CLAP; ChatML specials for the LLM."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chat
                else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if chat:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       model_max_length=512, chat_template=template)
    else:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                       unk_token="<unk>", mask_token="<mask>", model_max_length=77)
    fast.save_pretrained(out)
    return tok.get_vocab_size()


# ---------------------------------------------------------------- models

def _vae(out: Path) -> None:
    """AudioLDM2's AutoencoderKL layout (1 channel, 8 latent channels, 3 levels = x4 down) with tiny widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, act_fn="silu",
        sample_size=1024, scaling_factor=0.4110932946205139, force_upcast=True,
    )
    vae.save_pretrained(out)


def _vocoder(out: Path) -> None:
    """SpeechT5HifiGan: 64 mel bins in, x160 upsampling (= hop) out, like AudioLDM2's, but narrow."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(1)
    config = SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16_000, upsample_initial_channel=32, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[15, 8, 4, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    )
    SpeechT5HifiGan(config).save_pretrained(out)


def _t5(out: Path) -> None:
    from transformers import T5Config, T5EncoderModel

    vocab = _t5_tokenizer(out)
    torch.manual_seed(2)
    config = T5Config(vocab_size=vocab, d_model=T5_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      relative_attention_num_buckets=8)
    T5EncoderModel(config).save_pretrained(out)


def _clap(out: Path) -> None:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    vocab = _bpe_tokenizer(out, chat=False)
    torch.manual_seed(3)
    text = dict(vocab_size=vocab, hidden_size=CLAP_TEXT_DIM, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=80, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                projection_dim=CLAP_PROJECTION_DIM)
    # hidden_size must equal patch_embeds_hidden_size * 2**(len(depths)-1).
    audio = dict(depths=[1, 1], num_attention_heads=[2, 4], patch_embeds_hidden_size=16, hidden_size=32,
                 window_size=8, spec_size=256, num_mel_bins=64, enable_fusion=False,
                 projection_dim=CLAP_PROJECTION_DIM)
    config = ClapConfig(text_config=text, audio_config=audio, projection_dim=CLAP_PROJECTION_DIM)
    ClapModel(config).save_pretrained(out)
    ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad").save_pretrained(out)


def _llm(out: Path) -> None:
    """A ~1M-parameter Llama with a ChatML chat template (its output is noise; the plumbing is real)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = _bpe_tokenizer(out, chat=True)
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out)


BUILDERS = {"vae": _vae, "vocoder": _vocoder, "t5": _t5, "clap": _clap, "llm": _llm}


def build_tiny_kit(out_dir: str | Path) -> Path:
    """Write every tiny model into out_dir/<role>/ plus a kit.json marker; deterministic for a given version."""
    out = Path(out_dir)
    for role, build in BUILDERS.items():
        (out / role).mkdir(parents=True, exist_ok=True)
        build(out / role)
    _write_json(out / "kit.json", {"name": "tiny", "version": TINY_KIT_VERSION})
    return out
