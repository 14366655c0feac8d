"""Adapters: how a task runs (``mock``, ``shell``, ``python``, ``docker``, …).

An adapter receives a ``TaskContext`` and returns an ``Outcome``; the worker
owns everything around it (claiming, leases, cancellation, timeouts, retries,
the terminal event). See ``axon.adapters.base`` for the contract and
``axon.adapters.registry`` for how adapters are found (built-ins plus the
``axon.adapters`` entry-point group).
"""

from axon.adapters.base import Adapter, AdapterError, Outcome, TaskContext

__all__ = ["Adapter", "AdapterError", "Outcome", "TaskContext"]
