"""The migrated schema is exactly the models, on both stores."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.store import migrate
from server.store.database import create_store_engine
from server.store.tables import metadata


def _not_search_index(name: str | None, type_: str, _parent: object) -> bool:
    """Message search is made by migration 0013 alone: SQLite's FTS5 table (and its shadow tables),
    a virtual table, has no model; PostgreSQL's GIN index is on an expression."""
    if type_ == "table":
        return not (name or "").startswith("orch_messages_fts")
    return not (type_ == "index" and name == "ix_orch_messages_search")


def test_migrated_schema_equals_the_models(database_url):
    engine = create_store_engine(database_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            options = {"compare_type": True, "include_name": _not_search_index}
            diff = compare_metadata(MigrationContext.configure(conn, opts=options), metadata)
        assert diff == []
        assert migrate.is_current(engine)
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_tracks_head(database_url):
    engine = create_store_engine(database_url)
    try:
        migrate.upgrade(engine)
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_sqlite_store_runs_in_wal_mode(tmp_path):
    engine = create_store_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_upgrading_a_populated_store_keeps_its_tasks_claimable(database_url):
    """A store with work queued under the first schema upgrades to head with that work intact."""
    from alembic import command
    from sqlalchemy import select, text

    from server.store.tables import agents, tasks

    engine = create_store_engine(database_url)
    try:
        config = migrate.alembic_config()
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")  # the test store may arrive migrated; start from nothing
            command.upgrade(config, "0001")
            conn.execute(
                text(
                    "INSERT INTO orch_agents (id, name, profile, profile_version, runtime, capabilities, depth, "
                    "status, created_by, created_at, labels) VALUES ('agt_OLD', 'old', 'default', '1.0.0', "
                    "'external', '[\"general\"]', 0, 'active', 'admin', 5, '{}')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO orch_tasks (id, type, payload, capabilities, priority, status, submitted_by, "
                    "created_at, updated_at, attempts, max_attempts, cancel_requested, spec_hash) VALUES "
                    "('tsk_OLD', 'legacy', '{}', '[]', 1, 'queued', 'admin', 7, 7, 0, 3, false, 'h')"
                )
            )
            conn.commit()
            command.upgrade(config, "head")
            conn.commit()
            task = conn.execute(select(tasks).where(tasks.c.id == "tsk_OLD")).one()
            agent = conn.execute(select(agents).where(agents.c.id == "agt_OLD")).one()
        assert (task.ready_at, task.lease_s, task.unroutable, task.status) == (7, 60, False, "queued")
        assert task.dispatch_key == 1 * 600_000_000 + 7
        assert agent.max_concurrency == 1
    finally:
        engine.dispose()
