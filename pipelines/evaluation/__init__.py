"""The evaluation program: text -> audio with a trained model, and FAD / KL / IS / CLAP score (docs/evaluation.md)."""
