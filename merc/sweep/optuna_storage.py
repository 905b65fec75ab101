"""The driver's Optuna storage: reads from memory, writes behind to the persistent study.

A search's driver is the only writer of its study (:mod:`merc.sweep.optuna_glue`), and it works
in Ray Tune's loop, where every trial waits for its result to be processed: per epoch the pruner
wrote the intermediate value, re-read the trial and read every other trial from the RDB storage
(median 18 ms on a busy 2-core driver, growing with the values stored), and per new trial TPE's
ask and define-by-run sampling committed ~8 rows one by one (median 97 ms). Here the study lives
in an :class:`optuna.storages.InMemoryStorage`, loaded from the RDB storage when the study is
opened (a restored sweep sees every trial it had), and every write is replayed, in order, onto
the RDB storage by one writer thread. Sampler and pruner decisions are unchanged: they read the
same trials, only from memory.

What is in the RDB storage lags by the writes still queued (milliseconds): :meth:`flush` waits
for them and raises the first that failed; the searcher flushes before Tune snapshots its state,
the runner after ``Tuner.fit``, and the process at exit. A killed driver loses only the writes
after the last snapshot, which a restore repeats or marks FAIL (``OptunaSearcher._fail_orphans``).
Another process writing to the same study would break the numbering: the writer checks that the
RDB storage numbers each new trial as memory did and fails the sweep, naming the study, if not.
"""
from __future__ import annotations

import atexit
import copy
import queue
import threading
import weakref
from typing import Any, Callable, Container, Optional, Sequence

from optuna.distributions import BaseDistribution
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState

_LIVE: "weakref.WeakSet[WriteBehindStorage]" = weakref.WeakSet()


class WriteBehindStorage(BaseStorage):
    """An in-memory copy of the studies of ``backend`` that this process reads and writes; a
    writer thread replays the writes onto ``backend`` in order (see module doc)."""

    def __init__(self, backend: RDBStorage):
        self.backend = backend
        self._mem = InMemoryStorage()
        self._study_ids: dict[int, int] = {}        # memory study id -> backend study id
        self._trial_ids: dict[int, int] = {}        # memory trial id -> backend trial id (writer)
        self._queue: Optional[queue.Queue] = None
        self._error: Optional[BaseException] = None
        self._sync = threading.Lock()

    # ---- the writer thread --------------------------------------------------------------------
    def _submit(self, fn: Callable[[], None]) -> None:
        self._raise_pending()
        with self._sync:
            if self._queue is None:
                self._queue = queue.Queue()
                threading.Thread(target=self._drain, args=(self._queue,), daemon=True,
                                 name="merc-optuna").start()
                _LIVE.add(self)
        self._queue.put(fn)

    def _drain(self, q: queue.Queue) -> None:
        while True:
            fn = q.get()
            try:
                if self._error is None:          # after a failure, nothing more is written
                    fn()
            except BaseException as err:  # noqa: BLE001 - raised in the driver by flush
                self._error = err
            finally:
                q.task_done()

    def flush(self) -> None:
        """Wait until the persistent study has every write made so far; raise the first that
        failed."""
        if self._queue is not None:
            self._queue.join()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"optuna storage {self.backend.url}: writing the study failed: "
                               f"{type(err).__name__}: {err}") from err

    def _write(self, method: str, trial_id: int, *args: Any) -> None:
        self._submit(lambda: getattr(self.backend, method)(self._trial_ids[trial_id], *args))

    # ---- studies: written through (rare), loaded into memory when they exist -----------------
    def create_new_study(self, directions: Sequence[StudyDirection],
                         study_name: Optional[str] = None) -> int:
        if study_name is not None:
            try:
                bid = self.backend.get_study_id_from_name(study_name)
            except KeyError:
                bid = None
            if bid is not None:
                self._load(bid, study_name)
                raise DuplicatedStudyError(f"Another study with name '{study_name}' already "
                                           f"exists.")
        bid = self.backend.create_new_study(directions, study_name)
        name = self.backend.get_study_name_from_id(bid)
        sid = self._mem.create_new_study(directions, name)
        self._study_ids[sid] = bid
        return sid

    def _load(self, bid: int, name: str) -> None:
        """Copy a persistent study, trials in number order, into memory (once)."""
        try:
            self._mem.get_study_id_from_name(name)
            return
        except KeyError:
            pass
        sid = self._mem.create_new_study(self.backend.get_study_directions(bid), name)
        self._study_ids[sid] = bid
        for k, v in self.backend.get_study_user_attrs(bid).items():
            self._mem.set_study_user_attr(sid, k, v)
        for k, v in self.backend.get_study_system_attrs(bid).items():
            self._mem.set_study_system_attr(sid, k, v)
        for ft in sorted(self.backend.get_all_trials(bid, deepcopy=False), key=lambda t: t.number):
            self._trial_ids[self._mem.create_new_trial(sid, template_trial=ft)] = ft._trial_id

    def delete_study(self, study_id: int) -> None:
        self.flush()
        self.backend.delete_study(self._study_ids.pop(study_id))
        self._mem.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._mem.set_study_user_attr(study_id, key, value)
        bid = self._study_ids[study_id]
        self._submit(lambda: self.backend.set_study_user_attr(bid, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._mem.set_study_system_attr(study_id, key, value)
        bid = self._study_ids[study_id]
        self._submit(lambda: self.backend.set_study_system_attr(bid, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        try:
            return self._mem.get_study_id_from_name(study_name)
        except KeyError:
            self._load(self.backend.get_study_id_from_name(study_name), study_name)
            return self._mem.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._mem.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._mem.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._mem.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._mem.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._mem.get_all_studies()

    # ---- trials: memory first, the persistent copy behind -------------------------------------
    def create_new_trial(self, study_id: int, template_trial: Optional[FrozenTrial] = None) -> int:
        tid = self._mem.create_new_trial(study_id, template_trial)
        made = self.get_trial(tid)                 # the backend copies this very record
        bid, name = self._study_ids[study_id], self._mem.get_study_name_from_id(study_id)

        def create() -> None:
            btid = self.backend.create_new_trial(bid, template_trial=made)
            number = self.backend.get_trial_number_from_id(btid)
            if number != made.number:
                raise RuntimeError(
                    f"study {name!r}: the persistent study numbered a new trial {number}, this "
                    f"driver {made.number}: another process writes to this study (one driver per "
                    f"study; give the other sweep its own --name)")
            self._trial_ids[tid] = btid
        self._submit(create)
        return tid

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        self._mem.set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self._write("set_trial_param", trial_id, param_name, param_value_internal, distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Optional[Sequence[float]] = None) -> bool:
        changed = self._mem.set_trial_state_values(trial_id, state, values)
        if changed:
            self._write("set_trial_state_values", trial_id, state, values)
        return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        self._mem.set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._write("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._mem.set_trial_user_attr(trial_id, key, value)
        self._write("set_trial_user_attr", trial_id, key, copy.deepcopy(value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._mem.set_trial_system_attr(trial_id, key, value)
        self._write("set_trial_system_attr", trial_id, key, copy.deepcopy(value))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._mem.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._mem.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._mem.get_trial_param(trial_id, param_name)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return copy.deepcopy(self._mem.get_best_trial(study_id))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """A copy, as from an RDB storage: ``optuna.Trial`` edits the record it holds in place
        (its params as they are suggested), and the writer thread may be reading the stored
        one."""
        return copy.deepcopy(self._mem.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Optional[Container[TrialState]] = None) -> list[FrozenTrial]:
        return self._mem.get_all_trials(study_id, deepcopy=deepcopy, states=states)


def flush_all() -> None:
    """Flush every write-behind storage of this process (after ``Tuner.fit``, at exit)."""
    for st in list(_LIVE):
        st.flush()


@atexit.register
def _flush_at_exit() -> None:
    for st in list(_LIVE):
        try:
            st.flush()
        except Exception:  # noqa: BLE001 - the sweep already reported its outcome
            pass
