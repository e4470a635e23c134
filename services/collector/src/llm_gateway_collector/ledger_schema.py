"""The Postgres usage ledger's schema, derived from the event Struct and migrated at startup.

Every field of `UsageEvent` is a column of `usage_events` (primary key `event_id`); a field
added to the event becomes a new nullable column on the next start. Migrations run inside one
transaction holding an advisory lock, so replicas starting together apply them one at a time,
and every statement is idempotent, so re-running them is harmless.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from llm_gateway_common.events import FAILED_OUTCOMES, KNOWN_OUTCOMES, UsageEvent

TABLE = "usage_events"
_MIGRATION_LOCK = 0x11_6A7E_0001  # pg_advisory_xact_lock key owned by this schema
_SQL_TYPES: dict[Any, str] = {
    str: "text", int: "bigint", float: "double precision", bool: "boolean",
    datetime: "timestamptz",
}  # fmt: skip


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
        f'ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS "{name}" {sql_type}'
        for name, sql_type in event_columns()
        if name != "event_id"
    ]
    statements += [
        f"CREATE INDEX IF NOT EXISTS {TABLE}_tenant_time ON {TABLE} (tenant, started_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_model_time ON {TABLE} (model, started_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_time_brin ON {TABLE} USING brin (started_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id)",
        f"""CREATE OR REPLACE VIEW usage_daily AS
            SELECT (started_at AT TIME ZONE 'UTC')::date AS day, tenant, model,
                   count(*) AS requests,
                   count(*) FILTER (WHERE {_FAILED_SQL}) AS errors,
                   coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
                   coalesce(sum(completion_tokens), 0) AS completion_tokens,
                   coalesce(sum(total_tokens), 0) AS total_tokens
            FROM {TABLE}
            GROUP BY 1, 2, 3""",
    ]
    return statements


async def migrate(connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Create or bring up to date the table, its indexes and the `usage_daily` view."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        for statement in _statements():
            await connection.execute(statement)


def insert_statement() -> str:
    """One INSERT for a whole batch: a column array per field, unnested; duplicates skipped."""
    columns = event_columns()
    names = ", ".join(f'"{name}"' for name, _ in columns)  # quoted: `user` is reserved
    arrays = ", ".join(f"${i}::{sql_type}[]" for i, (_, sql_type) in enumerate(columns, 1))
    return (
        f"INSERT INTO {TABLE} ({names}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (event_id) DO NOTHING"
    )


def column_arrays(events: list[UsageEvent]) -> list[list[Any]]:
    return [[getattr(event, name) for event in events] for name, _ in event_columns()]
