"""Child processes that die with the process that started them, whatever kills it.

A pipeline killed with SIGKILL runs no cleanup code, so anything it started (a trainer, a temporary Prefect
server, an engine) would live on: a trainer would keep writing checkpoints into a stage folder that the re-run
is starting again, a server would hold its port and database. On Linux the kernel can do the cleanup instead:
``PR_SET_PDEATHSIG`` asks for a signal when the parent dies. It is tied to the parent *thread* that forked the
child, so start long-lived children from a thread that lives as long as they should (the main thread).
Elsewhere these helpers are no-ops and cleanup relies on the caller's ``finally``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # resolved here, not in a forked child, where loading a library is unsafe
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig))


def child_setup(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process dies.

    Also checks that the parent is still there once the request is in place: a parent that died between fork
    and the request would never signal, so the child exits at once instead.
    """
    parent = os.getpid()

    def setup() -> None:
        die_with_parent(sig)
        if os.getppid() != parent:
            os._exit(1)

    return setup
