"""What a --checkpoint may name, and which of those forms are safe to take from someone else (no torch import)."""
from __future__ import annotations

CHECKPOINT_FORMS = ("a run folder (its latest checkpoint), a checkpoint folder or its state.pt, a release folder, "
                    "or a release's ema.safetensors / model.safetensors")
# What every --checkpoint's help says: DCP reads a checkpoint's dcp/.metadata with pickle.
TRUST_NOTE = ("A checkpoint is unpickled (DCP metadata): load only checkpoints of runs you trust; take weights "
              "from anyone else as a release (safetensors) only")
