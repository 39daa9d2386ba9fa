"""The three Ray programs (corpus/, training/, evaluation/) and what they share: models/, storage, local Ray."""
