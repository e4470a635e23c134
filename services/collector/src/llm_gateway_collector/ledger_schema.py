"""The Postgres usage ledger's schema, derived from the event Struct and migrated at startup.

Every field of `UsageEvent` is a column of `usage_events` (primary key `event_id`); a field
added to the event becomes a new column on the next start (`ADD COLUMN IF NOT EXISTS`), nullable
unless `_NOT_NULL_DEFAULTS` gives the value the rows already there hold. Migrations run inside one
transaction holding an advisory lock, so replicas starting together apply them one at a time,
and every statement is idempotent, so re-running them is harmless.

A list field (`failed_targets`) is a `text[]` column. A batch is inserted as one array per
column, unnested, and Postgres cannot unnest an array of arrays into rows of arrays, so each
row's list travels as JSON (a `jsonb[]` parameter) and is turned back into an array in the
INSERT.

Money is exact end to end: `cost_usd` arrives as a JSON number decoded to a `Decimal`, goes to
asyncpg as that `Decimal` in a `numeric[]` parameter (its binary numeric codec: no float, no
text round trip), lands in a `numeric` column without precision or scale, and is summed as
numeric by the views.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import msgspec

from llm_gateway_common.events import FAILED_OUTCOMES, KNOWN_OUTCOMES, UsageEvent

TABLE = "usage_events"
_MIGRATION_LOCK = 0x11_6A7E_0001  # pg_advisory_xact_lock key owned by this schema
_SQL_TYPES: dict[Any, str] = {
    str: "text", int: "bigint", float: "double precision", bool: "boolean",
    datetime: "timestamptz", tuple[str, ...]: "text[]", Decimal: "numeric",
}  # fmt: skip
# Columns added to ledgers that already had rows, for which the event's default is also true of
# those rows (an old event decodes to it: no attempt recorded, no target failed): NOT NULL with
# that default, so queries need no coalesce, and a collector of the previous version, still
# inserting during a rolling upgrade, fills them too. Postgres adds such a column without
# rewriting the table. The columns of schema 1 stay as they were created, nullable.
_NOT_NULL_DEFAULTS: dict[str, str] = {
    "attempts": "0", "failed_targets": "'{}'", "cache_write_tokens": "0", "price_source": "'none'",
}  # fmt: skip
_json_encoder = msgspec.json.Encoder()


def _sql_strings(values: frozenset[str]) -> str:
    return ", ".join(f"'{value}'" for value in sorted(values))  # our own constants: no quotes


# `UsageEvent.failed` in SQL: outcomes are an open vocabulary, so one this version does not know
# (a newer producer's `fallback`) counts as an error only if the client got an error status.
_FAILED_SQL = (
    f"outcome IN ({_sql_strings(FAILED_OUTCOMES)}) OR "
    f"(outcome NOT IN ({_sql_strings(KNOWN_OUTCOMES)}) AND status_code >= 400)"
)


def event_columns() -> list[tuple[str, str]]:
    """(column, SQL type) for each event field, in declaration order."""
    hints = typing.get_type_hints(UsageEvent)
    return [(f.name, _sql_type(hints[f.name])) for f in msgspec.structs.fields(UsageEvent)]


def _sql_type(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _sql_type(inner)
    if typing.get_origin(annotation) is Literal:
        return "text"
    return _SQL_TYPES[annotation]


def _statements() -> list[str]:
    statements = [
        f"CREATE TABLE IF NOT EXISTS {TABLE} ("
        "event_id text PRIMARY KEY, ingested_at timestamptz NOT NULL DEFAULT now())"
    ]
    statements += [
        f'ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS "{name}" {sql_type}{_constraint(name)}'
        for name, sql_type in event_columns()
        if name != "event_id"
    ]
    statements += [
        f"CREATE INDEX IF NOT EXISTS {TABLE}_tenant_time ON {TABLE} (tenant, started_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_model_time ON {TABLE} (model, started_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_time_brin ON {TABLE} USING brin (started_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id)",
        # A coding session's usage is read from the ledger by its id, often without a time
        # range. Partial: requests outside a session (most, for chat clients) cost it nothing.
        f"CREATE INDEX IF NOT EXISTS {TABLE}_session_id ON {TABLE} (session_id) "
        "WHERE session_id IS NOT NULL",
        *_VIEWS,
    ]
    return statements


# Views are replaced on every start. `CREATE OR REPLACE VIEW` keeps a view's existing columns
# (names, types, order) and may only append new ones: a column added to `usage_daily` goes last.
# Money is summed as numeric, exactly; a request without a price (cost_usd NULL) is counted as
# unpriced and left out of the sum, so a group with no priced request has cost_usd NULL, not 0.
_VIEWS = (
    f"""CREATE OR REPLACE VIEW usage_daily AS
        SELECT (started_at AT TIME ZONE 'UTC')::date AS day, tenant, model,
               count(*) AS requests,
               count(*) FILTER (WHERE {_FAILED_SQL}) AS errors,
               coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(completion_tokens), 0) AS completion_tokens,
               coalesce(sum(total_tokens), 0) AS total_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_requests
        FROM {TABLE}
        GROUP BY 1, 2, 3""",
    f"""CREATE OR REPLACE VIEW spend_monthly AS
        SELECT date_trunc('month', started_at AT TIME ZONE 'UTC')::date AS month, tenant, model,
               count(*) AS requests,
               count(cost_usd) AS priced_requests,
               count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_requests,
               sum(cost_usd) AS cost_usd,
               coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
               coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
               coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
               coalesce(sum(cache_write_tokens), 0)::bigint AS cache_write_tokens
        FROM {TABLE}
        GROUP BY 1, 2, 3""",
)


def _constraint(name: str) -> str:
    default = _NOT_NULL_DEFAULTS.get(name)
    return "" if default is None else f" NOT NULL DEFAULT {default}"


async def migrate(connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Create or bring up to date the table, its indexes and its views (`usage_daily`,
    `spend_monthly`)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        for statement in _statements():
            await connection.execute(statement)


def insert_statement() -> str:
    """One INSERT for a whole batch: a column array per field, unnested; duplicates skipped."""
    columns = event_columns()
    names = ", ".join(f'"{name}"' for name, _ in columns)  # quoted: `user` is reserved
    arrays = ", ".join(f"${i}::{_batch_type(t)}[]" for i, (_, t) in enumerate(columns, 1))
    values = ", ".join(_from_batch(name, sql_type) for name, sql_type in columns)
    return (
        f"INSERT INTO {TABLE} ({names}) SELECT {values} FROM unnest({arrays}) AS batch({names}) "
        "ON CONFLICT (event_id) DO NOTHING"
    )


def column_arrays(events: list[UsageEvent]) -> list[list[Any]]:
    """The batch as `insert_statement` takes it: one list per column; a list field's values as
    JSON (see the module docstring)."""
    arrays = []
    for name, sql_type in event_columns():
        values = [getattr(event, name) for event in events]
        arrays.append([_json(v) for v in values] if _is_array(sql_type) else values)
    return arrays


def _batch_type(sql_type: str) -> str:
    return "jsonb" if _is_array(sql_type) else sql_type


def _from_batch(name: str, sql_type: str) -> str:
    if _is_array(sql_type):
        return f'ARRAY(SELECT jsonb_array_elements_text(batch."{name}"))::{sql_type}'
    return f'batch."{name}"'


def _is_array(sql_type: str) -> bool:
    return sql_type.endswith("[]")


def _json(value: Any) -> str:
    return _json_encoder.encode(value).decode()
