"""The contract every stage writes and reads: table schemas, the shared numbers, the output layout (imports nothing of ours)."""
from schemas.tables import CLIPS, CORPUS, NULL_TEXT, QUARANTINE, SCHEMA_VERSION, SHARD_INDEX, TABLES, TENSOR_LAYOUT, SchemaError, conform, validate

__all__ = ["CLIPS", "CORPUS", "NULL_TEXT", "QUARANTINE", "SCHEMA_VERSION", "SHARD_INDEX", "TABLES", "TENSOR_LAYOUT", "SchemaError", "conform", "validate"]
