"""What a training run leaves (checkpoints, releases) and reading its weights back: shared by training and evaluation."""
