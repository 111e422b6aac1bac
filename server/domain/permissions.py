"""Which roles may call which tool: the one table every adapter checks before a call runs.

Services still decide row-level rules (an agent acts only on its own tasks, locks and holds); this
table decides whether a role may ask at all. A tool missing here is refused for everyone but the
admin, so a new tool is closed until someone decides who may use it."""

from __future__ import annotations

from server.domain.principal import Role

_A, _O, _V, _G = Role.ADMIN, Role.OPERATOR, Role.VIEWER, Role.AGENT
EVERYONE = frozenset({_A, _O, _V, _G})
STAFF = frozenset({_A, _O})
RUNS_WORK = frozenset({_A, _O, _G})  # starts or stops work: not a viewer
SPENDS = frozenset({_A, _G})  # money: an agent within its budgets, or the admin
READERS = frozenset({_A, _O, _V})  # people and services that read the whole fleet; not agents
AGENT_ONLY = frozenset({_G})
ADMIN_ONLY = frozenset({_A})

TOOL_ROLES: dict[str, frozenset[Role]] = {
    "fleet_status": EVERYONE,
    "agent_list": EVERYONE,
    "agent_get": EVERYONE,
    "agent_spawn": RUNS_WORK,
    "agent_terminate": RUNS_WORK,
    "agent_restart": RUNS_WORK,
    "agent_heartbeat": AGENT_ONLY,
    "task_submit": RUNS_WORK,
    "task_get": EVERYONE,
    "task_wait": EVERYONE,
    "task_list": EVERYONE,
    "task_cancel": RUNS_WORK,
    "task_claim": AGENT_ONLY,
    "task_heartbeat": AGENT_ONLY,
    "task_complete": AGENT_ONLY,
    "task_fail": AGENT_ONLY,
    "task_log": AGENT_ONLY,
    "lock_acquire": SPENDS,
    "lock_renew": SPENDS,
    "lock_release": RUNS_WORK,  # an operator may force-release a stuck lock
    "lock_list": EVERYONE,
    "resource_set": ADMIN_ONLY,
    "budget_set": SPENDS,
    "budget_status": EVERYONE,
    "budget_reserve": SPENDS,
    "budget_release": SPENDS,
    "usage_record": AGENT_ONLY,  # usage is an agent's spend; the admin reserves and releases
    "workflow_run": RUNS_WORK,
    "workflow_get": EVERYONE,
    "workflow_list": EVERYONE,
    "workflow_cancel": RUNS_WORK,
    "workflow_template_save": STAFF,
    "workflow_template_list": EVERYONE,
    "workflow_template_get": EVERYONE,
    "workflow_template_deprecate": STAFF,
    "workflow_template_retire": STAFF,
    "approval_list": STAFF,
    "approval_decide": STAFF,
    "audit_query": STAFF,
    "token_create": ADMIN_ONLY,
    "token_list": ADMIN_ONLY,
    "token_revoke": ADMIN_ONLY,
    "token_rotate": ADMIN_ONLY,
    # Messages: row-level rules (who may reach whom, whose inbox) are the messaging service's.
    "message_send": RUNS_WORK,
    "message_request": RUNS_WORK,
    "message_inbox": EVERYONE,
    "message_ack": RUNS_WORK,  # viewers receive no messages
    "message_thread": EVERYONE,
    "message_search": EVERYONE,
    "topic_subscribe": RUNS_WORK,
    "topic_unsubscribe": RUNS_WORK,
    "event_list": EVERYONE,  # each principal reads only the events it may see
    "event_replay": STAFF,
    # Triggers create work on their owner's behalf: staff, or an agent whose profile names them.
    "trigger_create": RUNS_WORK,
    "trigger_list": RUNS_WORK,
    "trigger_get": RUNS_WORK,
    "trigger_update": RUNS_WORK,
    "trigger_delete": RUNS_WORK,
    "trigger_fire": RUNS_WORK,
    # Outbound URLs are the admin's to configure: no agent can make the server call an address.
    "notification_channel_create": ADMIN_ONLY,
    "notification_channel_list": STAFF,
    "notification_channel_delete": ADMIN_ONLY,
    "notification_deliveries": STAFF,
    "profile_list": READERS,
    "profile_get": READERS,
    "profile_export": STAFF,
    "profile_register": STAFF,  # process profiles and peer secrets: the admin only (the service checks)
    "profile_deprecate": STAFF,
    "profile_retire": STAFF,
    "profile_rollout_set": STAFF,
    "scorecard": EVERYONE,  # an agent: itself and its descendants (the service checks)
    "profile_compare": READERS,
    "task_feedback": RUNS_WORK,  # the submitter, an operator, or a reviewing agent (the service checks)
}

# Tools an agent may call only when its profile's permissions.tools names them (a profile without
# a tools list allows every other tool, but not these).
EXPLICIT_FOR_AGENTS = frozenset(
    {"trigger_create", "trigger_list", "trigger_get", "trigger_update", "trigger_delete", "trigger_fire"}
)

# A2A operations, named by the tool they stand for.
A2A_SEND = "task_submit"
A2A_STATUS = "fleet_status"
A2A_WORKFLOW = "workflow_run"
A2A_READ = "task_get"
A2A_CANCEL = "task_cancel"


def roles_for(tool: str) -> frozenset[Role]:
    return TOOL_ROLES.get(tool, ADMIN_ONLY)
