"""How a run stops early: on a signal, or on a failure it cannot train through; and its exit codes.

Exit codes of every command (the CLI maps the exceptions below to them):

| code | meaning |
|---|---|
| 0 | done |
| 1 | the run failed (`RunFailed`: a worker lost past its restart bound, a deadline passed, too much went unscorable) |
| 2 | bad usage, config or data; nothing was started (`cluster.config.ConfigError`) |
| 130 / 143 | stopped by SIGINT / SIGTERM (`Stopped`), after a resumable checkpoint when one could be written |

A first SIGTERM or SIGINT asks the run to stop at its next safe point (`StopSignal.requested`); the
loop checks it while it waits for rollouts and after each iteration, then checkpoints and exits. A
second signal stops at once, still cleaning up every actor.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from types import FrameType

EXIT_FAILED = 1
EXIT_CONFIG = 2
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class RunFailed(RuntimeError):
    """The run cannot go on; the message says what failed and what to do (one line)."""


class LearnerLost(RunFailed):
    """A learner rank died: the run can go on only from a checkpoint, with every rank anew."""

    def __init__(self, message: str):
        super().__init__(message)
        self.seen_at = time.perf_counter()  # when the loss was found (a restart's time counts from it)


class Stopped(Exception):
    """A stop signal was received."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return _SIGNAL_EXIT.get(signal.Signals(self.signum), 128 + self.signum)


class StopSignal:
    """Turns SIGTERM and SIGINT into a request to stop (`requested`), then, on the second, `Stopped`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise `Stopped` if a stop was requested."""
        if self.signum is not None:
            raise Stopped(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Stopped(signum)
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping at the next safe point (again: stop now)", flush=True
        )

    @contextmanager
    def installed(self):
        """Handle SIGTERM and SIGINT inside the block (main thread only; elsewhere a no-op).

        Install it after Ray started: Ray's driver installs a C++ handler that aborts on SIGTERM.
        """
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNAL_EXIT}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


NEVER = StopSignal()  # a stop signal that is never raised: for loops run outside `emo-r3 train`
