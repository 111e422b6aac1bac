"""Builds every service once, for the app's lifespan or a CLI command; adapters receive it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.clock import Clock, SystemClock
from server.domain.approval import Decision
from server.instruments import Instruments
from server.services.a2a_push import A2APushService
from server.services.a2a_records import A2ARecordService
from server.services.access import AccessPolicy
from server.services.admin_identity import claim_admin_identity
from server.services.agents import AgentService
from server.services.approval_rows import ApprovalTerms
from server.services.approvals import ApprovalService
from server.services.audit import AuditService
from server.services.auth import Authenticator
from server.services.autoscaling import AutoscaleService
from server.services.budgets import BudgetService
from server.services.events.log import EventBus
from server.services.events.notifications import NotificationService
from server.services.events.service import EventService
from server.services.events.trigger_loop import TriggerRunner
from server.services.events.triggers import TriggerService
from server.services.events.wakeups import EventWakeups
from server.services.feedback import FeedbackService
from server.services.fleet import FleetService
from server.services.gate import Gate
from server.services.leases import LeaseService
from server.services.locks import LockService
from server.services.messages.recipients import RecipientResolver
from server.services.messages.service import MessageService
from server.services.peers import PeerService
from server.services.pricing import PriceTable
from server.services.profile_catalog import ProfileCatalog
from server.services.profiles import ProfileRegistry, load_profile_folders, shipped_profiles_dir
from server.services.rate_limits import RateLimiter
from server.services.scorecards import ScorecardService
from server.services.signals import KeyedSignals, TaskSignals
from server.services.supervision import SupervisionService
from server.services.task_ends import TaskEnds
from server.services.task_logs import TaskLogService
from server.services.tasks import TaskService
from server.services.tokens import TokenService
from server.services.waiting import WaitService
from server.services.workflow_templates import WorkflowTemplateService, shipped_templates_dir
from server.services.workflows import WorkflowService
from server.settings import Settings
from server.store import migrate
from server.store.database import Database, check_reachable, create_store_engine


@dataclass
class Services:
    settings: Settings
    db: Database
    clock: Clock
    profiles: ProfileRegistry
    profile_catalog: ProfileCatalog
    feedback: FeedbackService
    scorecards: ScorecardService
    auth: Authenticator
    agents: AgentService
    tasks: TaskService
    leases: LeaseService
    locks: LockService
    budgets: BudgetService
    signals: TaskSignals
    lock_signals: KeyedSignals
    task_changes: KeyedSignals
    fleet: FleetService
    a2a_records: A2ARecordService
    audit: AuditService
    access: AccessPolicy
    gate: Gate
    tokens: TokenService
    approvals: ApprovalService
    supervision: SupervisionService
    peers: PeerService
    autoscaling: AutoscaleService
    workflows: WorkflowService
    workflow_templates: WorkflowTemplateService
    events: EventService
    triggers: TriggerService
    trigger_runner: TriggerRunner
    wakeups: EventWakeups
    waits: WaitService
    messages: MessageService
    notifications: NotificationService
    a2a_push: A2APushService
    instruments: Instruments
    task_logs: TaskLogService

    def release_waiters(self) -> None:
        """Every parked claim, lock wait and stream returns now: the server is stopping."""
        self.signals.close()
        self.lock_signals.close()
        self.task_changes.close()
        self.events.bus.close()

    def close(self) -> None:
        self.release_waiters()
        self.db.dispose()


def profile_folders(settings: Settings) -> list[Path]:
    folders = [shipped_profiles_dir()]
    if settings.profiles_dir is not None:
        folders.append(settings.profiles_dir)
    return folders


def build_services(
    settings: Settings, admin_token: str, clock: Clock | None = None, run_migrations: bool = True
) -> Services:
    clock = clock or SystemClock()
    folders = profile_folders(settings)
    files = load_profile_folders(folders)  # a broken file stops the start before the store is touched
    db = Database(create_store_engine(settings.resolved_database_url))
    profiles = ProfileRegistry()
    catalog = ProfileCatalog(db, clock, profiles)
    if run_migrations:
        check_reachable(db.engine)
        migrate.upgrade(db.engine)
        claim_admin_identity(db, clock, admin_token)
        catalog.import_files(files)
    else:  # another process migrated the store and imported the files
        profiles.attach(db)
        profiles.refresh_sync()
    task_ends = TaskEnds()
    signals = TaskSignals()
    lock_signals = KeyedSignals()
    task_changes = KeyedSignals()
    event_bus = EventBus()
    wakeups = EventWakeups(db, event_bus, task_changes, lock_signals)
    db.on_events = wakeups.local
    access = AccessPolicy(profiles)
    audit = AuditService(db, clock)
    instruments = Instruments()
    locks = LockService(db, clock, lock_signals, signals, settings.claim_recheck_s, access, instruments=instruments)
    leases = LeaseService(db, clock, signals, locks, settings.claim_recheck_s, task_ends, instruments=instruments)
    budgets = BudgetService(db, clock, profiles, PriceTable.load(settings.data_dir), instruments)
    agents = AgentService(db, clock, profiles, leases, locks, settings.max_agents)
    approval_terms = ApprovalTerms(settings.approval_timeout_s, Decision(settings.approval_on_expiry))
    tasks = TaskService(
        db,
        clock,
        profiles,
        signals,
        settings.max_payload_bytes,
        settings.priority_aging_s,
        access,
        approval_terms,
        task_ends,
    )
    workflows = WorkflowService(db, clock, tasks, access, task_ends, instruments)
    triggers = TriggerService(db, clock, tasks, workflows, access)
    workflow_templates = WorkflowTemplateService(db, clock)
    if run_migrations:
        workflow_templates.seed_shipped(shipped_templates_dir())
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        profiles=profiles,
        profile_catalog=catalog,
        feedback=FeedbackService(db, clock),
        scorecards=ScorecardService(db, clock),
        auth=Authenticator(db, clock, admin_token),
        agents=agents,
        tasks=tasks,
        leases=leases,
        locks=locks,
        budgets=budgets,
        signals=signals,
        lock_signals=lock_signals,
        task_changes=task_changes,
        fleet=FleetService(db, clock),
        a2a_records=A2ARecordService(db, clock),
        audit=audit,
        access=access,
        gate=Gate(db, clock, access, RateLimiter(db.dialect, settings, access), audit),
        tokens=TokenService(db, clock),
        approvals=ApprovalService(db, clock, signals, task_ends, instruments),
        supervision=SupervisionService(db, clock, profiles, leases, locks, settings.resolved_replica_id, instruments),
        peers=PeerService(db, clock, profiles, leases, locks, settings.resolved_replica_id),
        autoscaling=AutoscaleService(db, clock, agents, profiles),
        workflows=workflows,
        workflow_templates=workflow_templates,
        events=EventService(db, clock, event_bus),
        triggers=triggers,
        trigger_runner=TriggerRunner(db, clock, triggers),
        wakeups=wakeups,
        waits=WaitService(tasks, workflows, task_changes, settings.claim_recheck_s),
        messages=MessageService(db, clock, RecipientResolver(access), task_changes),
        notifications=NotificationService(db, clock, event_bus, settings),
        a2a_push=A2APushService(db, clock, settings),
        instruments=instruments,
        task_logs=TaskLogService(db, clock),
    )
