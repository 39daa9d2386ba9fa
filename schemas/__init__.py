from schemas.tables import CLIPS, CORPUS, NULL_TEXT, QUARANTINE, SCHEMA_VERSION, TABLES, TENSOR_LAYOUT, SchemaError, conform, validate

__all__ = ["CLIPS", "CORPUS", "NULL_TEXT", "QUARANTINE", "SCHEMA_VERSION", "TABLES", "TENSOR_LAYOUT", "SchemaError", "conform", "validate"]
