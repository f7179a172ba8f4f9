"""Entry points of the node executables (``attnlink_node``, ``attnlink_frontend``,
``attnlink_retrieval``), and the one way they stop.

Ctrl-C and SIGTERM are caught here before anything heavy is imported (torch, the ROS client
library): a signal only sets :data:`STOP`, whatever the process is doing at that moment (imports,
loading the model and map, a lifecycle transition, a callback publishing). ``spin_node`` polls the
flag between executor waits and tears down in order: node first, while its context is valid,
then ``rclpy.shutdown``. rclpy's own handlers, which shut the context down from inside the signal,
are never installed (they raced the executor: "failed to initialize wait set: the given context
is not valid", and publishers or lifecycle transitions failed on an invalid context).
"""

from __future__ import annotations

import signal
import threading

STOP = threading.Event()


def _on_signal(signum, frame) -> None:  # the main thread, between bytecodes: nothing but the flag
    STOP.set()


def catch_stop_signals() -> dict:
    """Routes SIGINT and SIGTERM to :data:`STOP`; returns the previous handlers."""
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def node_main(args=None) -> None:
    catch_stop_signals()
    from .lifecycle import spin_node
    from .node import AttnLinkNode

    spin_node(AttnLinkNode)


def frontend_main(args=None) -> None:
    catch_stop_signals()
    from .lifecycle import spin_node
    from .split import FrontEndNode

    spin_node(FrontEndNode)


def retrieval_main(args=None) -> None:
    catch_stop_signals()
    from .lifecycle import spin_node
    from .split import RetrievalNode

    spin_node(RetrievalNode)
