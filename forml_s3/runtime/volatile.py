"""Objects that pickle without their per-process state (locks, memos, counters), which starts afresh in the copy.

ForML pickles the registry into every worker (Dask, multiprocessing); a lock or a memo must not travel with it.
"""

import typing


class Volatile:
    """Pickles its ``__dict__`` minus the attributes named in :attr:`VOLATILE`; unpickling calls
    :meth:`_init_volatile` (which ``__init__`` calls too) to make them anew."""

    VOLATILE: typing.ClassVar[tuple[str, ...]] = ()

    def _init_volatile(self) -> None:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, typing.Any]:
        return {name: value for name, value in self.__dict__.items() if name not in self.VOLATILE}

    def __setstate__(self, state: dict[str, typing.Any]) -> None:
        self.__dict__.update(state)
        self._init_volatile()
