"""The process supervisor behind ``greenroom up``: one OS process per actor replica (and the edge),
restarted with backoff, given up on past its restart intensity, stopped in order.

``greenroom ps`` and ``greenroom chaos`` read the process table it keeps in ``<run_dir>/up.json``.
"""

from runtime.procsup._state import (
    ProcessState,
    ProcessStatus,
    UpState,
    read_state,
    state_path,
    supervisor_alive,
)
from runtime.procsup._supervisor import (
    GiveUp,
    ProcessGaveUp,
    ProcessSpec,
    ProcessSupervisor,
    Restart,
    describe_exit,
)

__all__ = [
    "GiveUp",
    "ProcessGaveUp",
    "ProcessSpec",
    "ProcessState",
    "ProcessStatus",
    "ProcessSupervisor",
    "Restart",
    "UpState",
    "describe_exit",
    "read_state",
    "state_path",
    "supervisor_alive",
]
