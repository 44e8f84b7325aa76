"""Training progress on stderr, process 0 only: a tqdm bar on a terminal, plain lines elsewhere.

``train.progress=false`` turns it off. Otherwise :func:`choose_form` picks the form from where stderr
goes: a terminal (or a notebook, through ``tqdm.auto``) gets the bar; a file or pipe (a Slurm log,
``nohup``, a CI log) gets one line per log step and no ``\\r``::

    step 200/3000: loss 0.4213, 5310 img/s, ETA 0:01:03

Both ETAs come from the steps after this process's first one: the first step compiles, and
counting it made the first estimates many times too long (:class:`SteadyRate`).
Lines that stay (a validation result, a signal's note) go to stdout through :meth:`Progress.write`.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any, Callable, Literal, TextIO

Form = Literal["bar", "lines", "off"]


class SteadyRate:
    """Steps per second over the steps after the first one timed (the first step compiles).

    ``step()`` after each step; ``eta(remaining)`` in seconds, None until two steps have been timed."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._first: float | None = None  # when the first step ended
        self._last = 0.0
        self._steps = 0  # steps timed after the first

    def step(self, n: int = 1) -> None:
        now = self._clock()
        if self._first is None:
            self._first, n = now, n - 1
        self._steps += n
        self._last = now

    @property
    def per_second(self) -> float | None:
        if not self._steps or self._last <= self._first:
            return None
        return self._steps / (self._last - self._first)

    def eta(self, remaining: int) -> float | None:
        if remaining <= 0:
            return 0.0
        rate = self.per_second
        return remaining / rate if rate else None


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _zero_width(stream: Any) -> bool:
    """A terminal that reports 0 columns (a pty nobody sized, as under ``script`` without a terminal):
    tqdm would draw an empty bar there."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns == 0
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is no terminal but renders a bar); imports nothing."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def choose_form(enabled: bool, stream: TextIO | None = None) -> Form:
    """``"bar"`` on a terminal or in a notebook, ``"lines"`` otherwise, ``"off"`` when not ``enabled``."""
    if not enabled:
        return "off"
    stream = sys.stderr if stream is None else stream
    terminal = _isatty(stream) and not _zero_width(stream)
    return "bar" if terminal or in_notebook() else "lines"


def _bar_class():
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns when it picks its notebook form
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    class _Bar(tqdm):
        # tqdm's monitor thread (it only retunes miniters) outlives the bar; train starts no
        # thread that it does not join.
        monitor_interval = 0

        def __init__(self, *args, rate: SteadyRate, **kwargs):
            self.rate = rate  # before tqdm's __init__, which draws the bar
            super().__init__(*args, **kwargs)

        @property
        def format_dict(self):
            # tqdm's rate counts the compile step; the steady one does not ("?" until it is known).
            d = super().format_dict
            steady = self.rate.per_second
            d["rate"] = steady
            if steady is None:
                d["initial"] = d["n"]  # tqdm's fallback rate (n - initial) / elapsed is then 0: "?"
            return d

    return _Bar


class Progress:
    """The loop's report: :meth:`step` after every step, :meth:`log` at each log step, :meth:`write` for
    lines that stay; :meth:`close` at the end. ``form``: see :func:`choose_form`."""

    def __init__(self, total: int, initial: int, form: Form, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.done, self.form = total, initial, form
        self.stream = stream
        self.rate = SteadyRate(clock)
        self.bar = None
        if form == "bar":
            self.bar = _bar_class()(total=total, initial=initial, unit="step", dynamic_ncols=True,
                                    file=self.stream if self.stream is not None else sys.stderr, rate=self.rate)

    def step(self) -> None:
        self.done += 1
        self.rate.step()
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, loss: float, images_per_sec: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {images_per_sec:.0f} img/s")
        elif self.form == "lines":
            print(self.line(step, loss, images_per_sec), file=self.stream or sys.stderr, flush=True)

    def line(self, step: int, loss: float, images_per_sec: float) -> str:
        eta = format_eta(self.rate.eta(self.total - step))
        return f"step {step}/{self.total}: loss {loss:.4f}, {images_per_sec:.0f} img/s, ETA {eta}"

    def write(self, text: str) -> None:
        """A line on stdout that stays (a bar is cleared around it)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def warn(text: str) -> None:
    """A line on stderr that does not break a bar (tqdm clears and redraws any open bar around it)."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
