"""SIGTERM or Ctrl-C (SIGINT) anywhere in a kd-train run: a non-zero exit with one line that says how to
resume.

Inside a ``Trainer`` run Lightning installs its own SIGTERM handler, stops the fit at the end of the step
and :class:`~kd_lightning.app.resume.InterruptCheckpoint` saves the stage. Outside one (building a data
set or stored teacher outputs, between stages, while the report is written) the default action would
kill the process without a word, and a plain ``except Exception`` could even swallow a Python-level
signal. :class:`SigtermGuard` covers those moments: its handler raises :class:`Interrupted` (a
``BaseException``, like ``KeyboardInterrupt``), which unwinds through the atomic writers (their
temporary files are removed, so no half-written file is ever left under its final name) up to the
entry point. The guard is installed by the CLI entry point only, never on import, and puts the previous
handler back when the run ends.

Ctrl-C is handled as SIGTERM is: the guard's SIGINT handler calls whatever SIGTERM handler is installed
(Lightning's inside a fit, which stops at the end of the step and leads to the resumable checkpoint; the
guard's own outside one). A second Ctrl-C raises ``KeyboardInterrupt`` at once, for a user who will not
wait for the step to end.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived outside a Trainer run; the run stops where it is."""


_ACTIVE: Optional["SigtermGuard"] = None


def stop_if_received() -> None:
    """Raise :class:`Interrupted` if a SIGTERM reached the active guard while a Trainer ran but did not stop
    it (Lightning checks between steps and batches; a signal during the last test batch goes unacted)."""
    if _ACTIVE is not None and _ACTIVE.received:
        raise Interrupted()


def signal_name() -> str:
    """The signal that stopped the run (``"SIGTERM"`` or ``"SIGINT"``), as the closing line names it."""
    return _ACTIVE.name if _ACTIVE is not None and _ACTIVE.name else "SIGTERM"


class SigtermGuard:
    """``with SigtermGuard(): ...``: SIGTERM raises :class:`Interrupted`, except while a Trainer runs.

    While Lightning's handler is installed it calls this one after its own (it keeps the handler it
    found); this handler then only records the signal and lets Lightning stop the loop gracefully.
    ``received`` tells afterwards whether a SIGTERM (or SIGINT) came at all, ``name`` which came first.
    """

    def __init__(self) -> None:
        self.previous: Any = None
        self.previous_sigint: Any = None
        self.installed = False
        self.received = False
        self.name = ""

    def __enter__(self) -> "SigtermGuard":
        global _ACTIVE
        if threading.current_thread() is threading.main_thread():  # signals are for the main thread only
            self.previous = signal.signal(signal.SIGTERM, self.handle)
            self.previous_sigint = signal.signal(signal.SIGINT, self.handle_sigint)
            self.installed = True
            _ACTIVE = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _ACTIVE
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
            signal.signal(signal.SIGINT, self.previous_sigint if self.previous_sigint is not None
                          else signal.default_int_handler)
            self.installed = False
            _ACTIVE = None

    def handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.name = self.name or "SIGTERM"
        self.received = True
        if signal.getsignal(signal.SIGTERM) == self.handle:  # no Trainer is running: stop right here
            raise Interrupted()
        # Otherwise Lightning's handler ran first and stops the fit (or test) at the end of the step.

    def handle_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.name == "SIGINT":  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.name = self.name or "SIGINT"
        current = signal.getsignal(signal.SIGTERM)
        if callable(current):
            current(signal.SIGTERM, frame)
