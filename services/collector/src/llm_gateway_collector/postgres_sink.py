"""The Postgres usage ledger: batched, idempotent writes into `usage_events`.

One statement per batch (`INSERT ... SELECT * FROM unnest(...) ON CONFLICT (event_id) DO
NOTHING`), so redelivered events are never counted twice. While Postgres is down or slow the
sink raises RetryLater and the batch stays unacknowledged; the pool reconnects by itself. A batch
Postgres refuses for its data is retried row by row, and only the rows it refuses are
dead-lettered.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from llm_gateway_collector.ledger_schema import column_arrays, insert_statement, migrate
from llm_gateway_common.consumer import Delivery, RetryLater

log = structlog.get_logger("llm_gateway.collector")

# Errors that say "not now" rather than "never": connection trouble, shutdown, overload, locks.
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    asyncpg.LockNotAvailableError,
    asyncpg.DeadlockDetectedError,
    asyncpg.QueryCanceledError,
    asyncpg.SerializationError,
)


class PostgresSink:
    def __init__(self, dsn: str, *, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._insert = insert_statement()

    async def start(self) -> None:
        """Connect and migrate if Postgres is there; if not, `write` retries until it is."""
        try:
            await self._connect()
        except _TRANSIENT as exc:
            log.warning("postgres_unavailable_at_start", error=type(exc).__name__)

    async def close(self) -> None:
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), self._timeout)

    async def ready(self) -> bool:
        try:
            pool = await self._connect()
            await pool.fetchval("SELECT 1", timeout=self._timeout)
        except _TRANSIENT:
            return False
        return True

    async def write(self, deliveries: list[Delivery]) -> dict[str, str]:
        try:
            pool = await self._connect()
            await pool.execute(
                self._insert, *column_arrays([d.event for d in deliveries]), timeout=self._timeout
            )
        except _TRANSIENT as exc:
            raise RetryLater(f"postgres: {type(exc).__name__}") from exc
        except asyncpg.PostgresError as exc:
            log.warning("postgres_refused_batch", error=type(exc).__name__, batch=len(deliveries))
            return await self._write_one_by_one(deliveries)
        return {}

    async def _write_one_by_one(self, deliveries: list[Delivery]) -> dict[str, str]:
        refused: dict[str, str] = {}
        pool = await self._connect()
        for delivery in deliveries:
            try:
                await pool.execute(self._insert, *column_arrays([delivery.event]),
                                   timeout=self._timeout)  # fmt: skip
            except _TRANSIENT as exc:
                raise RetryLater(f"postgres: {type(exc).__name__}") from exc
            except asyncpg.PostgresError as exc:
                refused[delivery.entry_id] = f"postgres refused the row: {exc}"
        return refused

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is None:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=2, timeout=self._timeout,
                command_timeout=self._timeout,
            )  # fmt: skip
            try:
                async with pool.acquire(timeout=self._timeout) as connection:
                    await migrate(connection)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            log.info("postgres_connected_and_migrated")
        return self._pool
