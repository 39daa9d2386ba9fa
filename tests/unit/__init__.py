"""Unit tests: pure functions and single model wrappers on the tiny kit; no Ray, no servers (`pytest tests/unit`)."""
