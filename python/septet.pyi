"""Multiply NumPy matrices on a septet grid.

Every product is checked (Freivalds' test) before it is used, slow peers
are hedged, and every connection is authenticated with the cluster secret
(and encrypted with ``encrypt=True``). Calls release the GIL while the grid
works; Ctrl-C stops a call and releases the lease taken for it.
"""

from os import PathLike
from typing import Any, Dict, Optional, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "PathLike[str]"]

class GridError(Exception):
    """A grid operation failed (tracker or peer unreachable, secret refused,
    job could not finish); the message is the CLI's one-line error."""

def matmul(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    tracker: str,
    secret_file: Optional[_Path] = None,
    encrypt: bool = False,
    verify: bool = True,
    timeout: Optional[float] = None,
    report: Optional[_Path] = None,
    depth: Union[int, str, None] = None,
) -> np.ndarray:
    """``a @ b`` computed on the grid whose tracker is at ``tracker`` (host:port).

    ``a`` and ``b`` are 2-D float64 or float32 arrays of one dtype, in any
    layout (C, Fortran, strided). C-contiguous operands are read in place,
    not copied; when both are Fortran-ordered the grid computes
    ``(b.T @ a.T)`` from them in place and the result is Fortran-ordered
    (else C-ordered); an operand in another layout is copied once (the
    smaller one when the two orders differ). The result is the array the
    grid's answer was written into, not a copy. Seven slots are leased for
    the call and released after it; with ``depth=2``, 49 (each of the seven
    products split again over a group of seven, as ``septet multiply
    --depth 2``), and with ``depth="auto"`` 49 for a job of at least
    16384³ when 49 peers are free, else seven.

    Raises ``ValueError`` for bad input (not 2-D, mismatched shapes, other
    dtypes, NaN or ±inf unless ``verify=False``, a report path in a missing
    directory) before anything is leased, and ``GridError`` when the grid
    fails or ``timeout`` seconds pass. ``report`` writes the job's HTML
    report (also for a failed job).
    """

class Grid:
    """A connection to a septet grid; use it as a context manager.

    ``secret_file`` is the cluster secret as ``septet secret`` writes it;
    ``encrypt=True`` encrypts every connection (needs the secret)."""

    def __init__(self, tracker: str, *, secret_file: Optional[_Path] = None, encrypt: bool = False) -> None: ...
    @property
    def tracker(self) -> str:
        """The tracker's address."""
    def matmul(
        self,
        a: npt.ArrayLike,
        b: npt.ArrayLike,
        *,
        verify: bool = True,
        timeout: Optional[float] = None,
        report: Optional[_Path] = None,
        depth: Union[int, str, None] = None,
    ) -> np.ndarray:
        """``a @ b`` on the grid, on the lease held (see ``lease``) or on one
        taken for the call. As ``septet.matmul`` otherwise; a held lease
        runs one level, so ``depth`` other than 1 needs none held."""
    def lease(self, count: int = 7, *, max_wait: Optional[float] = None) -> int:
        """Leases seven slots and holds them (renewed) for the following
        calls until ``release``/``close``; returns the lease id. Raises
        ``GridError`` if ``max_wait`` seconds pass in the tracker's queue."""
    def release(self) -> bool:
        """Gives the held lease back; returns whether one was held."""
    @property
    def lease_id(self) -> Optional[int]:
        """The id of the lease held, or None."""
    def peers(self) -> Any:
        """The tracker's peer table: a polars DataFrame if polars is
        installed, else a pandas DataFrame (ImportError if neither is)."""
    @property
    def last_job(self) -> Optional[Dict[str, Any]]:
        """The last job's summary: the fields ``septet multiply --json`` prints,
        and ``operand_copies`` (0, 1 or 2: operands copied because of their
        layout) and ``transposed`` (whether it ran as ``(b.T @ a.T).T``)."""
    def close(self) -> None:
        """Releases the lease held; later calls raise GridError."""
    def __enter__(self) -> "Grid": ...
    def __exit__(self, *args: object) -> bool: ...

class LocalGrid(Grid):
    """A tracker and ``workers`` workers on 127.0.0.1 in this process, with a
    secret made for it: for notebooks and tests. ``close()`` (or leaving the
    ``with`` block) stops them."""

    def __init__(self, workers: int = 7, *, encrypt: bool = False) -> None: ...
    @property
    def workers(self) -> int:
        """Workers started."""
    def __enter__(self) -> "LocalGrid": ...
