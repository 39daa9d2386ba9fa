from schemas.tables import CLIPS, CORPUS, NULL_TEXT, QUARANTINE, SCHEMA_VERSION, TABLES, TENSOR_LAYOUT, SchemaError, conform, validate
from schemas.fingerprints import FINGERPRINTS

TABLES["fingerprints"] = FINGERPRINTS   # defined in its own file, registered with the others here

__all__ = ["CLIPS", "CORPUS", "FINGERPRINTS", "NULL_TEXT", "QUARANTINE", "SCHEMA_VERSION", "TABLES", "TENSOR_LAYOUT",
           "SchemaError", "conform", "validate"]
