"""The contract every stage writes and reads: table schemas, the shared numbers, the output layout (imports nothing of ours)."""
from schemas.fingerprints import FINGERPRINTS
from schemas.tables import (CLIPS, CORPUS, NULL_TEXT, QUARANTINE, SCHEMA_VERSION, SHARD_INDEX, TABLES, TENSOR_LAYOUT,
                            SchemaError, conform, validate)

TABLES["fingerprints"] = FINGERPRINTS   # defined in its own file, registered with the others here

__all__ = ["CLIPS", "CORPUS", "FINGERPRINTS", "NULL_TEXT", "QUARANTINE", "SCHEMA_VERSION", "SHARD_INDEX", "TABLES",
           "TENSOR_LAYOUT", "SchemaError", "conform", "validate"]
