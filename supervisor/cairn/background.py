"""Run blocking calls in daemon threads, so one that hangs can neither stall the loop nor exit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Start `fn` in a fresh daemon thread; the future resolves on the calling loop.

    Unlike asyncio.to_thread, a call stuck in the kernel (a dead NFS mount, a wedged GPU
    driver) does not hold up the interpreter's exit: daemon threads are not joined.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if future.done():  # cancelled by the awaiting side
            return
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            future.set_exception(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result: tuple[bool, object] = (True, fn())
        except BaseException as err:  # handed to the awaiting coroutine
            result = (False, err)
        with contextlib.suppress(RuntimeError):  # the loop closed while we ran
            loop.call_soon_threadsafe(settle, *result)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
