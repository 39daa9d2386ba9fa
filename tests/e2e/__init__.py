"""End-to-end tests: whole jobs as users run them (corpus, training, evaluation, faults, submit, loopback)."""
