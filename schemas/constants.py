"""The numbers every stage shares: one place for each fact (spec: shared/reference/fluxmusic-spec.md §1-§4)."""

SAMPLE_RATE = 16_000          # Hz, mono, after resampling
CLIP_SECONDS = 10.24
CLIP_SAMPLES = 163_840        # = CLIP_SECONDS * SAMPLE_RATE
MIN_CLIP_SECONDS = 5.12       # default: shorter tails are dropped (and counted)
SILENCE_DBFS = -60.0          # default: a clip whose RMS is below this is silent (gate) and gets no descriptors

N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 160              # 100 mel frames per second
N_MELS = 64
F_MIN = 0.0
F_MAX = 8_000.0
MEL_FRAMES = 1024             # 1025 centred STFT frames, the last one dropped (spec §1)
LOG_MEL_FLOOR = 1e-5          # log_mel = ln(max(mel, 1e-5))
PEAK_LEVEL = 0.5              # waveform normalisation: mean removed, peak 0.5

LATENT_CHANNELS = 8
LATENT_SHAPE = (8, 256, 16)   # AudioLDM2 VAE latent of one clip: channels x time x mel
PATCH = 2                     # 2x2 patchify -> 1024 tokens x 32 channels
GRID_ROWS = LATENT_SHAPE[1] // PATCH       # 128 time rows of patches
GRID_COLS = LATENT_SHAPE[2] // PATCH       # 8 mel columns of patches
MUSIC_TOKENS = GRID_ROWS * GRID_COLS       # 1024 music tokens per clip

T5_MAX_TOKENS = 256
CLAP_MAX_TOKENS = 77
CLAP_DIM = 768                # CLAP text pooler_output (not the 512-d projection)

CAPTION_ORIGINAL_PROBABILITY = 0.2   # the paper's 20 % original / 80 % synthetic mix
CFG_DROPOUT = 0.1                    # per encoder, replaced by the empty-caption embedding
