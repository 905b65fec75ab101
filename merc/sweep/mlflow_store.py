"""A new sqlite MLflow store from a cached, pre-migrated empty database.

MLflow builds a new sqlite store by creating its initial tables and then running every alembic
migration up to the head revision (~50 files, 2-5 s of CPU on the 2-core machine), once per
new ``mlflow.db``: a fixed cost of every sweep that starts on a new store (issue 13, sweep
throughput). The result is the same empty schema each time, so it is made once per installed
MLflow (keyed by its version and head revision) in the user's cache, and a new store is a copy
of it. MLflow then only checks the schema revision (``_verify_schema``) and adds its default
experiment (artifact location relative to the current directory, as for a store it created).

Anything unexpected (a private MLflow function gone, a read-only cache, a template whose
revision MLflow rejects) falls back to MLflow's own creation path: the copy is an optimisation,
never a requirement. The caller holds the store's file lock (:func:`merc.sweep.tracking.
init_sqlite_store`), so two sweeps starting on one new store never both copy or migrate.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$MERC_CACHE/mlflow`` (default ``~/.cache/merc/mlflow``), the dataset cache's sibling."""
    from merc.data.synthetic import cache_root
    return cache_root() / "mlflow"


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The alembic head revision the installed MLflow expects of a store."""
    from mlflow.store.db.utils import _get_latest_schema_revision
    return _get_latest_schema_revision()


def db_revision(path: Path) -> Optional[str]:
    """The alembic revision recorded in a sqlite file (None: not an MLflow store)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def template_path() -> Path:
    import mlflow
    return cache_dir() / f"empty-mlflow-{mlflow.__version__}-{head_revision()}.db"


def _build_template(target: Path) -> None:
    """MLflow's own creation path (initial tables + every migration) on a temporary file,
    without the default experiment (its artifact location depends on the current directory),
    renamed into place only when it is at the head revision (atomic: concurrent builders are
    harmless, the last rename wins with identical content)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".db", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    if db_revision(Path(tmp)) != head_revision():
        os.unlink(tmp)
        raise RuntimeError("the migrated template is not at MLflow's head revision")
    os.replace(tmp, target)


def template() -> Path:
    """The cached empty store of the installed MLflow, built on first use."""
    path = template_path()
    if not path.is_file() or db_revision(path) != head_revision():
        _build_template(path)
    return path


def seed_new_store(db: Path) -> bool:
    """Make ``db`` a copy of the cached empty store when it does not exist yet (or is an empty
    file); True when copied. Never raises: on any problem MLflow creates the store itself."""
    try:
        if db.exists() and db.stat().st_size > 0:
            return False
        src = template()
        fd, tmp = tempfile.mkstemp(suffix=".db.part", dir=db.parent)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, db)
        return True
    except Exception as err:  # noqa: BLE001 - an optimisation only
        log.debug("no pre-migrated MLflow store (%s); MLflow creates it", err)
        try:
            if "tmp" in locals() and os.path.exists(tmp):
                os.unlink(tmp)
        except OSError:
            pass
        return False
