"""What a training run leaves (checkpoints, releases) and reading its weights back: for training and evaluation."""
