"""Tasks, one file each, behind the protocol in ``tasks.base``. Importing this package registers
every task module in it."""

from ablate.registry import TASKS, import_submodules

import_submodules(__name__, __path__)


def default_task() -> str:
    """The one registered task marked ``default`` (used when a sweep or `ablate train` names none)."""
    marked = [name for name in TASKS if TASKS.get(name).default]
    if len(marked) != 1:
        raise RuntimeError(f"exactly one registered task must set default = True; found {marked}")
    return marked[0]
