"""SIGINT (Ctrl-C) and SIGTERM (preemption): a flag the training loop checks between steps.

A Python signal handler raises into whatever the main thread runs next, and XLA, orbax and the
prefetch thread are often in native code then; a ``KeyboardInterrupt`` unwinding through them, or an
interpreter shutting down around them, aborts or segfaults the process. So no signal here raises:

- while a training loop listens (``StopRequest.listening``), the first SIGINT or SIGTERM only sets
  the flag; the loop finishes its step, saves it and returns, and the process exits normally
  (130 after SIGINT, 0 after SIGTERM);
- otherwise (imports, compilation, evaluation, sampling, or a second signal) there is nothing unsaved
  to keep, and the process ends at once with ``os._exit``, so that no thread is torn down half-way.

The command line receives the signals in a thread of their own (``watch_signals``), so a signal is
acted on even while the main thread waits inside a long XLA call; a library caller gets ordinary
Python handlers for the duration of ``train`` (``python_handlers``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The shell's convention, 128 + signal number, for a process ended by a signal before it could save.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 128 + signal.SIGTERM}


class StopRequest:
    """Which signal asked the training loop to stop, if any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listening = 0
        self.signal: signal.Signals | None = None

    def is_set(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def listening(self) -> Iterator[StopRequest]:
        """While inside, the first signal sets the flag instead of ending the process."""
        with self._lock:
            self._listening += 1
        try:
            yield self
        finally:
            with self._lock:
                self._listening -= 1

    def deliver(self, signum: int) -> None:
        with self._lock:
            if self._listening and self.signal is None:
                self.signal = signal.Signals(signum)
                return
        exit_now(signum, again=self.signal is not None)


def exit_now(signum: int, again: bool = False) -> None:
    """Ends the process without unwinding any thread; files already written are complete (every
    jaxconv write is atomic or append-only, and orbax renames a checkpoint only once it is whole)."""
    name = signal.Signals(signum).name
    note = " again: exiting without saving" if again else ""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.write(2, f"jaxconv: interrupted ({name}){note}\n".encode())
    os._exit(EXIT_CODES[signal.Signals(signum)])


def watch_signals() -> StopRequest:
    """Blocks SIGINT and SIGTERM in every thread (call before any thread starts, so they all inherit
    the mask) and receives them in one thread of its own."""
    stop = StopRequest()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def receive() -> None:
        while True:
            stop.deliver(signal.sigwait(SIGNALS))

    threading.Thread(target=receive, daemon=True, name="jaxconv-signals").start()
    return stop


@contextlib.contextmanager
def python_handlers(stop: StopRequest) -> Iterator[StopRequest]:
    """For a library caller (no ``watch_signals``): Python handlers that deliver to ``stop``, while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, lambda signum, _: stop.deliver(signum)) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
