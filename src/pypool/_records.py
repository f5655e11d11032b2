"""The records the two cores hand out, shared by both so that they are one
type whichever core is in use."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ("SlotInfo",)


class SlotInfo(NamedTuple):
    """What :meth:`CorePool.slot_info` says about one slot.

    A named tuple: ``info.state`` and ``info[0]`` are the same field, so code
    that unpacks it by position keeps working. Times are :meth:`CorePool.now`
    values, 0.0 for never.
    """

    #: The slot's state: ``EMPTY``, ``CREATING``, ``IDLE``, ``BUSY`` or ``RESERVED``.
    state: int
    #: When the slot's connection was put in (0.0: none yet).
    created: float
    #: When it was last handed out.
    checked_out: float
    #: When it was last given back.
    returned: float
    #: How many times it was handed out since it was put in.
    uses: int
    #: The pool's generation when it was put in (see ``advance_generation``).
    generation: int
    #: The end of its lifetime (0.0: none).
    expires: float


SlotInfo.__module__ = "pypool"  # where users find it; pickles by that name
