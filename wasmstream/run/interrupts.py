"""Ctrl-C and SIGTERM reach a guest stuck in a loop.

Python runs signal handlers only between bytecodes of the main thread; a main thread inside a
guest call (`-j 1`) would not see Ctrl-C until the guest returned, which may be never. The C
part of Python's handler does run at once, though, and writes the signal's number to the
wakeup fd. A small thread waits on that fd and calls the registered hooks — the engines, which
interrupt their guests (wasmtime: by advancing the epoch). The guest call then returns, and the
Python handler raises KeyboardInterrupt (or Interrupted) as usual: the run saves its checkpoint
and exits 130 (143).

Installed by the CLI only, which owns the process; a library caller keeps its own signals.
The workers of a local cluster, which share the CLI's terminal, ignore Ctrl-C (`dask_setup`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

_hooks: list[Callable[[], None]] = []
_lock = threading.Lock()


def on_interrupt(hook: Callable[[], None]) -> Callable[[], None]:
    """Call `hook` (from another thread) when SIGINT or SIGTERM arrives; returns a remover."""
    with _lock:
        _hooks.append(hook)

    def remove() -> None:
        with _lock:
            if hook in _hooks:
                _hooks.remove(hook)

    return remove


# A signal's exception, kept: raised in a finalizer or a callback (Dask's, asyncio's), Python
# prints "Exception ignored in …" and goes on, and the signal would be lost; the loops that
# can run there (a cluster client's, part by part) raise it again (`raise_pending`).
_pending: list[BaseException] = []


def deliver(error: BaseException) -> NoReturn:
    """Raise `error` from a signal handler, kept in case it is swallowed where it lands."""
    _pending[:] = [error]
    raise error


def raise_pending() -> None:
    """Raise a signal's exception that was swallowed (once)."""
    if _pending:
        raise _pending.pop()


def quiet_when_pending(
    fallback: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], None]:
    """A `sys.unraisablehook` that says nothing of a signal's exception a finalizer swallowed
    (it is raised again, by `raise_pending`: its "Exception ignored in …" traceback under the
    run's one line would only mislead), and hands everything else to `fallback`."""

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if any(unraisable.exc_value is kept for kept in _pending):
            return
        fallback(unraisable)

    return hook


def install() -> None:
    """Route SIGINT and SIGTERM to the hooks as well. Call from the main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(
        target=_watch, args=(read_end,), name="wasmstream-signals", daemon=True
    ).start()


def _watch(read_end: int) -> None:
    while signals := os.read(read_end, 64):
        if any(number in (signal.SIGINT, signal.SIGTERM) for number in signals):
            with _lock:
                hooks = list(_hooks)
            for hook in hooks:
                hook()


def dask_setup(worker: object) -> None:
    """Run by each worker of a local cluster (`--cluster local:N`) as it starts (a Dask
    preload). A terminal's Ctrl-C goes to the whole foreground process group, so these workers
    get it too, and each printed a KeyboardInterrupt traceback under the client's one line:
    they ignore it instead; the client, which takes it, closes them."""
    if threading.current_thread() is threading.main_thread():  # where Dask runs it
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def interruptible(work: Callable[[], T]) -> T:
    """`work()`, run on a helper thread while the calling thread waits where signals reach it.

    For long C calls that release the GIL but cannot be interrupted themselves (compiling a
    large module takes seconds; Ctrl-C would only act once it returned). A signal raises in the
    waiting thread at once; the helper thread is a daemon and dies with the process.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as error:
            failure.append(error)

    helper = threading.Thread(target=target, name="wasmstream-compile", daemon=True)
    helper.start()
    helper.join()  # lock waits are interrupted by signals: KeyboardInterrupt raises here
    if failure:
        raise failure[0]
    return outcome[0]
