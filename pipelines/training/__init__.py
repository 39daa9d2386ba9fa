"""The training program: Ray Train rectified-flow training of FluxMusic from the corpus tables (docs/training.md)."""
