"""Group commit: the commands waiting for a service's database share one transaction.

Every command's transaction costs a BEGIN, a COMMIT (a WAL flush) and PostgreSQL's per-transaction
work. Under concurrency the runner spends that once for a batch: a writer opens one transaction,
and the commands queued behind it run in it one after another, each inside a savepoint of its own,
and the writer commits once for all of them.

Each command still runs its statements in its own coroutine, so its context (the message it came
in, its log binding, the secrets hidden from the logs) stays its own: the writer hands it the
connection (its *turn*), waits until it has finished, and moves on to the next. Its outcome stays
its own as well:

- a refusal or a failing handler rolls back to the command's savepoint: the others keep their
  effects, and the command answers with its error after the batch commits;
- a result or an error leaves only once the COMMIT that holds its effects (or the savepoint's
  rollback) has succeeded, so no reply or ack ever speaks for something not yet durable;
- a transient failure (the database lost mid-batch, a deadlock) rolls the whole batch back and
  every command in it fails with that error; each is then retried on its own, like a command
  without a batch, and the idempotency claim sees to it that none runs twice;
- a COMMIT that fails for any other reason (a deferred constraint) names no culprit: every
  command of the batch runs again alone, in a transaction of its own, so the others commit and
  the one at fault fails with its own error.

A command whose handler waits on slow work besides the database (auth_service's password hashes,
declared `runs_alone`) never joins a batch: in one, the hashes would run one after another and
every command behind them would wait, where alone they run on the hashing threads side by side.

At c=1 nothing queues: a command finds a writer slot free and nobody waiting and runs alone, in a
transaction of its own exactly as without group commit, so latency does not grow. Batches form
only when every writer slot is busy: the commands that arrive meanwhile wait, and the next free
writer takes them all (up to `max_batch`).

Savepoints rather than rolling the batch back and re-running its commands alone when one fails:
the two measured alike on the bench (bench/RESULTS.md, "Issue 14": one round trip per command is
below the run-to-run noise), and with savepoints a refusal costs nobody else anything, where a
re-run would let anyone sending refused commands make every batch they join run twice.

Unreleased savepoints are cheap (no round trip to release them) but each one that writes takes a
subtransaction id; PostgreSQL caches 64 per backend before snapshots get slower for every session,
which bounds `max_batch`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from shared.database import TRANSIENT_DATABASE_ERRORS, Connection

T = TypeVar("T")

#: PostgreSQL caches 64 subtransaction ids per backend (PGPROC_MAX_CACHED_SUBXIDS); past that,
#: every snapshot in the cluster must look in pg_subtrans.
MAX_BATCH_LIMIT = 64

#: A batch's size when not configured: the prefetch's default, so one delivery burst fits one batch.
DEFAULT_MAX_BATCH = 32
#: Transactions a service keeps open at once for commands (batches, or commands alone).
DEFAULT_WRITERS = 2

_SAVEPOINT = "SAVEPOINT command"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT command"


class _RunAlone(Exception):
    """The batch's COMMIT failed, and not for a transient reason: run again, alone."""


@dataclass(eq=False, slots=True)
class _Job(Generic[T]):
    """A command waiting in the queue, then taking its turn in a batch."""

    #: Set by the writer: the batch's connection when the job's turn comes, or `None` when the
    #: writer has nothing to share and the job should run alone (a batch of one).
    turn: asyncio.Future[Connection | None]
    #: Set by the job when its statements are done: whether it broke the batch's transaction.
    done: asyncio.Future[BaseException | None]
    #: Set by the writer once the batch's COMMIT succeeded (or with why it did not).
    committed: asyncio.Future[None]


@dataclass(slots=True)
class GroupCommitStats:
    """How commands have run so far: alone, or in how many batches of several."""

    alone: int = 0
    batches: int = 0
    batched_commands: int = 0
    #: Batches whose COMMIT failed for a reason that was not transient (their commands ran alone).
    commits_failed: int = 0


class GroupCommit:
    """Runs units of work (`work(conn)`, the statements of one command) in shared transactions.

    `work` runs again, alone, when its batch's COMMIT fails for a reason that is not transient,
    so it must decide everything afresh each time it runs.

    `on_commit` runs after every successful COMMIT (the runner wakes its outbox relay there);
    `on_batch` is told each batch's size (a metric).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int,
        writers: int,
        on_commit: Callable[[], None] = lambda: None,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch must be 1 to {MAX_BATCH_LIMIT}, not {max_batch}")
        if writers < 1:
            raise ValueError(f"writers must be at least 1, not {writers}")
        self._pool = pool
        self._max_batch = max_batch
        self._max_writers = writers
        self._on_commit = on_commit
        self._on_batch = on_batch
        self._pending: deque[_Job[Any]] = deque()
        self._writers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = GroupCommitStats()

    async def run(self, work: Callable[[Connection], Awaitable[T]], *, alone: bool = False) -> T:
        """Run `work` in a transaction, shared with others when they queue; return its result
        (or raise its error) once that transaction has committed. With `alone`, always in a
        transaction of its own, without waiting for a writer: for work that waits on something
        slow besides the database, which a batch would make its other commands wait for too."""
        if alone:
            return await self._alone(work)
        if self._max_batch == 1 or (not self._pending and self._writers < self._max_writers):
            # Nobody is waiting: run now, alone, taking a writer slot so that the commands arriving
            # meanwhile queue up for a batch instead of each opening a transaction of its own.
            self._writers += 1
            try:
                return await self._alone(work)
            finally:
                self._writers -= 1
                self._start_writers()
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(loop.create_future(), loop.create_future(), loop.create_future())
        self._pending.append(job)
        self._start_writers()
        try:
            conn = await job.turn
        except _RunAlone:
            return await self._alone(work)
        except BaseException as exc:
            if job.turn.done() and not job.turn.cancelled() and job.turn.exception() is None:
                # Cancelled just as its turn came: it ran nothing, so the batch goes on without it.
                job.done.set_result(None)
            elif isinstance(exc, asyncio.CancelledError):
                job.turn.cancel()  # the writer skips it
            raise
        if conn is None:
            try:
                return await self._alone(work)
            finally:
                job.done.set_result(None)
        return await self._in_batch(job, conn, work)

    async def _alone(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        self.stats.alone += 1
        async with self._pool.acquire() as conn, conn.transaction():
            result = await work(conn)
        self._on_commit()
        return result

    async def _in_batch(self, job: _Job[T], conn: Connection, work: Callable[[Connection], Awaitable[T]]) -> T:
        """The job's turn: its statements inside a savepoint of the batch's transaction."""
        outcome: BaseException | None = None
        broke: BaseException | None = None
        result: Any = None
        try:
            await conn.execute(_SAVEPOINT)
            try:
                result = await work(conn)
            except TRANSIENT_DATABASE_ERRORS:
                raise
            except Exception as exc:
                # This command's effects go; the batch's stay. Its error leaves after the commit.
                outcome = exc
                await conn.execute(_ROLLBACK_TO_SAVEPOINT)
        except BaseException as exc:  # the connection, or this task (cancelled), is gone
            broke = exc
            job.done.set_result(exc)
            raise
        job.done.set_result(broke)
        try:
            await job.committed  # raises what broke the batch, if anything did
        except _RunAlone:
            return await self._alone(work)
        if outcome is not None:
            raise outcome
        return result  # type: ignore[no-any-return]

    def _start_writers(self) -> None:
        while self._pending and self._writers < self._max_writers:
            self._writers += 1
            task = asyncio.create_task(self._write())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self) -> None:
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
                await self._run_batch(batch)
        finally:
            self._writers -= 1
            # Only `run` and writers start writers: one that ended by failing must not strand a queue.
            self._start_writers()

    async def _run_batch(self, batch: list[_Job[Any]]) -> None:
        batch = [job for job in batch if not job.turn.done()]  # a cancelled job waits no more
        if len(batch) <= 1:
            for job in batch:
                job.turn.set_result(None)
                await asyncio.shield(job.done)
            return
        self._on_batch(len(batch))
        broke: BaseException | None = None
        ran = 0  # how many jobs were given their turn
        committing = False
        try:
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                for job in batch:
                    ran += 1
                    if job.turn.done():  # cancelled while it waited
                        continue
                    job.turn.set_result(conn)
                    broke = await asyncio.shield(job.done)
                    if broke is not None:
                        break
                if broke is None:
                    committing = True
                    await transaction.commit()
                else:
                    await _roll_back_quietly(transaction)
        except BaseException as exc:
            # Acquiring, BEGIN or COMMIT failed (the database is away), or this writer was cancelled.
            broke = broke or exc
            if isinstance(exc, asyncio.CancelledError):
                _fail(batch, ran, _as_retryable(broke))
                raise
        self.stats.batches += 1
        self.stats.batched_commands += len(batch)
        if broke is None:
            self._on_commit()
            for job in batch:
                if not job.committed.done():
                    job.committed.set_result(None)
        elif committing and not isinstance(broke, TRANSIENT_DATABASE_ERRORS):
            self.stats.commits_failed += 1
            _fail(batch, ran, _RunAlone())
        else:
            _fail(batch, ran, _as_retryable(broke))


def _fail(batch: list[_Job[Any]], ran: int, failure: BaseException) -> None:
    """Tell every job of a batch that did not commit: those that ran lose their effects with the
    rollback, those never given their turn never ran."""
    for index, job in enumerate(batch):
        future: asyncio.Future[Any] = job.committed if index < ran else job.turn
        if not future.done():
            future.set_exception(failure)
            # The job that broke the batch raised already and never reads its own: no warning for it.
            future.exception()


def _as_retryable(exc: BaseException) -> BaseException:
    """What every command of a broken batch raises: a transient database error, which the runner
    waits out and retries, whatever broke it (a cancelled writer included)."""
    if isinstance(exc, TRANSIENT_DATABASE_ERRORS):
        return exc
    return asyncpg.InterfaceError(f"the batch this command ran in was rolled back: {type(exc).__name__}: {exc}")


async def _roll_back_quietly(transaction: Any) -> None:
    try:
        await transaction.rollback()
    except TRANSIENT_DATABASE_ERRORS:
        pass  # the connection is gone, and the transaction with it
