"""Thin command-line jobs: argparse -> a config -> one library call (each explains itself with --help)."""
