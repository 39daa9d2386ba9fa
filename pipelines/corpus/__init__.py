"""The corpus program: a Ray Data pipeline from raw music to versioned Parquet tables (docs/architecture.md)."""
