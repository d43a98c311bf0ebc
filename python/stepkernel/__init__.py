"""stepkernel: run Python tests one step at a time; pause on failure and attach any Jupyter client.

The wheel ships the ``stepkernel`` binary (on the environment's PATH), this
package (``python -m stepkernel`` and :func:`find_stepkernel_bin`;
``stepkernel.client`` for sessions, ``stepkernel.walks`` for combinatorial
walks), the ``stepkernel`` kernelspec, and the ``pytest --stepkernel`` plugin.
"""

from __future__ import annotations

from ._find_stepkernel import StepkernelNotFound, find_stepkernel_bin

__all__ = ["StepkernelNotFound", "find_stepkernel_bin"]
