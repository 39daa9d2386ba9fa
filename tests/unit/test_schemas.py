import pyarrow as pa
import pytest

from schemas import (
    CORPUS,
    QUARANTINE,
    SCHEMA_VERSION,
    TABLES,
    SchemaError,
    conform,
    validate,
)


def quarantine_rows(n=2):
    return {
        "item_id": [f"t{i}" for i in range(n)], "track_id": [f"t{i}" for i in range(n)],
        "source_uri": ["/x.wav"] * n, "clip_index": [-1] * n, "track_clip_count": [1] * n,
        "stage": ["decode"] * n, "reason": ["unreadable"] * n, "detail": ["boom"] * n,
    }


def test_every_table_carries_name_and_version():
    for name, schema in TABLES.items():
        assert schema.metadata[b"fluxmusic.table"].decode() == name
        assert schema.metadata[b"fluxmusic.schema_version"].decode() == str(SCHEMA_VERSION)


def test_conform_casts_orders_and_validates():
    rows = quarantine_rows()
    table = conform(pa.table(dict(reversed(list(rows.items())))), QUARANTINE)
    assert table.column_names == QUARANTINE.names
    assert table.schema.field("clip_index").type == pa.int32()
    validate(table, QUARANTINE)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("reason"), "column 'reason' is missing"),
    (lambda r: r.update(clip_index=["a", "b"]), "column 'clip_index' has type string"),
    (lambda r: r.update(stage=[None, "decode"]), "column 'stage' has 1 nulls"),
    (lambda r: r.update(surprise=[1, 2]), "unexpected columns ['surprise']"),
])
def test_validator_names_the_wrong_column(mutate, message):
    good = conform(pa.table(quarantine_rows()), QUARANTINE)
    rows = good.to_pydict()
    mutate(rows)
    table = pa.table(rows).replace_schema_metadata(QUARANTINE.metadata)
    with pytest.raises(SchemaError) as err:
        validate(table, QUARANTINE)
    assert message in str(err.value)


def test_validator_checks_table_name_and_version():
    table = conform(pa.table(quarantine_rows()), QUARANTINE)
    with pytest.raises(SchemaError, match="metadata says table 'corpus'"):
        validate(table.replace_schema_metadata(CORPUS.metadata), QUARANTINE)
    old = {**QUARANTINE.metadata, b"fluxmusic.schema_version": b"0"}
    with pytest.raises(SchemaError, match="v0"):
        validate(table.replace_schema_metadata(old), QUARANTINE)
