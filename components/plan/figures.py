"""The measured write pauses `pgha plan` quotes: README "What a change does to a running stack".

Measured by ``bench/replace.py --trials 3`` on 2026-12-01 (rto fast, rpo 0, the rehearsal on a
2-core machine, a writer through 5433). A figure changes here when the bench is run again.
"""

from dataclasses import dataclass
from typing import Any, Mapping

MEASURED_ON = "2026-12-01"
MEASURED_BY = "bench/replace.py --trials 3 (rto fast, rpo 0)"


@dataclass(frozen=True)
class Figure:
    """A write pause: median and max seconds, and whether it moves the primary."""

    what: str
    median_s: float
    max_s: float
    switchover: bool

    def as_dict(self) -> dict[str, Any]:
        return {"measured": True, "figure": self.what, "median_s": self.median_s, "max_s": self.max_s,
                "switchover": self.switchover, "measured_on": MEASURED_ON, "by": MEASURED_BY}


FIGURES: Mapping[str, Figure] = {
    "primary": Figure("the primary replaced", 3.45, 3.79, True),
    "standby": Figure("the synchronous standby replaced", 0.16, 0.17, False),
    "roll": Figure("a roll of all three", 4.16, 4.76, True),
    # A restart roll's switchover is the same handover as a replaced primary's (README).
    "switchover": Figure("the primary's handover (as when it is replaced)", 3.45, 3.79, True),
}
