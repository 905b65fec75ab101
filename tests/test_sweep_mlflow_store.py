"""A new sqlite MLflow store is a copy of a cached, pre-migrated empty one (merc.sweep.mlflow_store):
MLflow accepts it without running a migration, each copy gets its own default experiment, and
two stores never share state."""
from __future__ import annotations

import pytest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_new_store_is_a_copy_and_needs_no_migration(tmp_path, cache, monkeypatch):
    import mlflow.store.db.utils as dbu
    from mlflow.tracking import MlflowClient

    from merc.sweep import mlflow_store
    from merc.sweep.tracking import init_sqlite_store

    tpl = mlflow_store.template()
    assert tpl.parent == cache / "mlflow" and tpl.is_file()
    assert mlflow_store.db_revision(tpl) == mlflow_store.head_revision()

    def no_migration(*a, **kw):
        raise AssertionError("MLflow ran its migrations on a seeded store")
    monkeypatch.setattr(dbu, "_initialize_tables", no_migration)
    monkeypatch.setattr(dbu, "_upgrade_db", no_migration)
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    init_sqlite_store(uri)
    client = MlflowClient(uri)
    (default,) = client.search_experiments()
    assert default.experiment_id == "0"
    assert default.artifact_location.endswith(str(work / "mlruns" / "0"))
    eid = client.create_experiment("e")
    run = client.create_run(eid, tags={"merc.role": "parent"})
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    # another new store: empty, independent of the first
    other = f"sqlite:///{tmp_path / 'other.db'}"
    init_sqlite_store(other)
    assert [e.name for e in MlflowClient(other).search_experiments()] == ["Default"]
    # an existing store is opened as is (not replaced by the template)
    init_sqlite_store(uri)
    assert client.get_experiment_by_name("e") is not None


def test_falls_back_to_mlflow_when_the_template_cannot_be_made(tmp_path, cache, monkeypatch):
    from mlflow.tracking import MlflowClient

    from merc.sweep import mlflow_store
    from merc.sweep.tracking import init_sqlite_store

    def broken(target):
        raise RuntimeError("no template today")
    monkeypatch.setattr(mlflow_store, "_build_template", broken)
    db = tmp_path / "m.db"
    assert mlflow_store.seed_new_store(db) is False and not db.exists()
    init_sqlite_store(f"sqlite:///{db}")          # MLflow creates and migrates it itself
    assert mlflow_store.db_revision(db) == mlflow_store.head_revision()
    assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]
    assert not list(tmp_path.glob("*.part"))


def test_a_stale_template_is_rebuilt(tmp_path, cache):
    import sqlite3

    from merc.sweep import mlflow_store
    tpl = mlflow_store.template()
    con = sqlite3.connect(tpl)
    con.execute("UPDATE alembic_version SET version_num = 'old'")
    con.commit()
    con.close()
    assert mlflow_store.db_revision(tpl) == "old"
    assert mlflow_store.seed_new_store(tmp_path / "n.db")
    assert mlflow_store.db_revision(tmp_path / "n.db") == mlflow_store.head_revision()
