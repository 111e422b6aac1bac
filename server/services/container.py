"""Builds every service once, for the app's lifespan or a CLI command; adapters receive it."""

from __future__ import annotations

from dataclasses import dataclass

from server.clock import Clock, SystemClock
from server.services.a2a_records import A2ARecordService
from server.services.agents import AgentService
from server.services.auth import Authenticator
from server.services.fleet import FleetService
from server.services.leases import LeaseService
from server.services.profiles import ProfileRegistry, shipped_profiles_dir
from server.services.signals import TaskSignals
from server.services.tasks import TaskService
from server.settings import Settings
from server.store import migrate
from server.store.database import Database, create_store_engine


@dataclass
class Services:
    settings: Settings
    db: Database
    clock: Clock
    profiles: ProfileRegistry
    auth: Authenticator
    agents: AgentService
    tasks: TaskService
    leases: LeaseService
    signals: TaskSignals
    fleet: FleetService
    a2a_records: A2ARecordService

    def close(self) -> None:
        self.signals.close()
        self.db.dispose()


def load_profiles(settings: Settings) -> ProfileRegistry:
    folders = [shipped_profiles_dir()]
    if settings.profiles_dir is not None:
        folders.append(settings.profiles_dir)
    return ProfileRegistry.load(folders)


def build_services(
    settings: Settings, admin_token: str, clock: Clock | None = None, run_migrations: bool = True
) -> Services:
    clock = clock or SystemClock()
    profiles = load_profiles(settings)
    db = Database(create_store_engine(settings.resolved_database_url))
    if run_migrations:
        migrate.upgrade(db.engine)
    signals = TaskSignals()
    leases = LeaseService(db, clock, signals, settings.claim_recheck_s)
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        profiles=profiles,
        auth=Authenticator(db, admin_token),
        agents=AgentService(db, clock, profiles, leases),
        tasks=TaskService(db, clock, profiles, signals, settings.max_payload_bytes, settings.priority_aging_s),
        leases=leases,
        signals=signals,
        fleet=FleetService(db),
        a2a_records=A2ARecordService(db, clock),
    )
