"""One generation at a time: a FIFO of jobs run by a single worker thread.

The :class:`~beagle.decoding.engine.SpeculativeGenerator` holds per-call state and is not
thread-safe, so every request becomes a :class:`GenerationJob` that waits in line. The worker
streams the job's text into an ``asyncio.Queue`` owned by the request's event loop and checks
the job's cancel flag after every accepted chunk, so a client that goes away frees the
generator within one target pass; a job cancelled while still waiting is skipped.
:meth:`GenerationWorker.shutdown` stops the running job the same way (its client gets a
"shutting down" error rather than a reply cut short without a word) and fails the queued ones.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from beagle.errors import BeagleError

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More jobs are waiting than the worker accepts."""


class WorkerClosed(Exception):
    """The worker is shutting down."""


class GenerationJob:
    """One request's generation. Events (read with :meth:`next_event`):
    ``("text", str)`` chunks, then ``("done", DecodeStats)`` or ``("error", Exception)``."""

    def __init__(self, prompt_ids: list[int], settings, loop: asyncio.AbstractEventLoop):
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()
        self.shutting_down = False  # cancelled because the server stops (not by its client)
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.finished = False

    def cancel(self, shutting_down: bool = False) -> None:
        """Ask the worker to stop this job (at the next accepted chunk, or before it starts)."""
        if shutting_down:
            self.shutting_down = True
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def queue_wait_s(self) -> float:
        return (self.started - self.submitted) if self.started is not None else 0.0

    async def next_event(self, timeout: float | None = None) -> tuple[str, object] | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if timeout is None:
            return await self.events.get()
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def emit(self, kind: str, value) -> None:
        """Called on the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the request's event loop is gone
            self.cancel()


class GenerationWorker:
    """Runs :class:`GenerationJob` s one at a time, in submission order, on a daemon thread."""

    def __init__(self, generator, max_pending: int = 64):
        self.generator = generator
        self.max_pending = max_pending
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # waiting + running
        self._current: GenerationJob | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.completed = 0  # jobs finished (cancelled ones included)
        self.cancelled = 0  # jobs stopped or skipped because their client went away

    # ------------------------------------------------------------ event loop side
    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run_forever, name="beagle-generation", daemon=True)
                self._thread.start()

    def submit(self, prompt_ids: list[int], settings) -> GenerationJob:
        """Queue a job (call from the event loop). Raises QueueFull / WorkerClosed."""
        self.start()
        job = GenerationJob(prompt_ids, settings, asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                raise WorkerClosed("the server is shutting down")
            if self._pending >= self.max_pending:
                raise QueueFull(f"{self._pending} requests are already queued (limit {self.max_pending})")
            self._pending += 1
        self._jobs.put(job)
        return job

    def state(self) -> dict:
        with self._lock:
            running = self._current is not None
            return {"running": int(running), "waiting": self._pending - int(running), "completed": self.completed,
                    "cancelled": self.cancelled}

    def shutdown(self) -> None:
        """Refuse new jobs, stop the running one at its next chunk and fail the queued ones ("shutting down").
        Returns at once; :meth:`close` also stops the thread."""
        with self._lock:
            self._closed = True
            current = self._current
        if current is not None:
            logger.info("shutting down: stopping the running generation")
            current.cancel(shutting_down=True)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.emit("error", WorkerClosed("the server is shutting down"))
                with self._lock:
                    self._pending -= 1

    def close(self, timeout: float = 10.0) -> None:
        """:meth:`shutdown`, then stop the thread (waiting up to ``timeout`` seconds for it)."""
        self.shutdown()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ---------------------------------------------------------------- worker side
    def _run_forever(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._current = job
                if self._closed:  # taken off the queue while shutdown() drained it
                    job.cancel(shutting_down=True)
            final: tuple[str, object] = ("error", RuntimeError("the generation worker failed"))
            try:
                final = self._run(job)
            finally:
                # The books are kept before the last event goes out: a client that has its reply sees the counts.
                with self._lock:
                    self._current = None
                    self._pending -= 1
                    self.completed += 1
                job.finished = True
                job.emit(*final)

    def _run(self, job: GenerationJob) -> tuple[str, object]:
        """Stream ``job``'s text; returns its last event, ("done", stats) or ("error", exception)."""
        if job.cancelled:
            logger.info("skipping a request cancelled while queued")
            self.cancelled += 1
            return "error", WorkerClosed("the server is shutting down" if job.shutting_down else "cancelled")
        job.started = time.perf_counter()
        try:
            stream = self.generator.stream(job.prompt_ids, job.settings)
            try:
                for text in stream:
                    job.emit("text", text)
                    if job.cancelled:  # checked between accepted chunks
                        break
            finally:
                stream.close()
            stats = self.generator.last_stats
            if job.cancelled and stats.stop_reason not in ("eos", "length", "stop_string"):
                stats.stop_reason = "cancelled"
        except BeagleError as error:
            return "error", error
        except Exception as error:  # noqa: BLE001 - reported to the client, the worker keeps running
            logger.exception("generation failed")
            return "error", error
        if stats.stop_reason == "cancelled" and job.shutting_down:
            self.cancelled += 1
            logger.info("request stopped by the shutdown after %d tokens", stats.new_tokens)
            return "error", WorkerClosed(f"the server is shutting down; the reply was cut short after "
                                         f"{stats.new_tokens} tokens")
        if stats.stop_reason == "cancelled":
            self.cancelled += 1
            logger.info("request cancelled by its client after %d tokens", stats.new_tokens)
        else:
            logger.info(
                "generated %d tokens (prompt %d) in %d target passes, tau %.2f, %.1f tokens/s, queued %.2fs",
                stats.new_tokens, len(job.prompt_ids), stats.target_passes, stats.tau, stats.tokens_per_s,
                job.queue_wait_s,
            )
        return "done", stats
