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
    "approval_list": STAFF,
    "approval_decide": STAFF,
    "audit_query": STAFF,
    "token_create": ADMIN_ONLY,
    "token_list": ADMIN_ONLY,
    "token_revoke": ADMIN_ONLY,
    "token_rotate": ADMIN_ONLY,
}

# A2A operations, named by the tool they stand for.
A2A_SEND = "task_submit"
A2A_STATUS = "fleet_status"
A2A_WORKFLOW = "workflow_run"
A2A_READ = "task_get"
A2A_CANCEL = "task_cancel"


def roles_for(tool: str) -> frozenset[Role]:
    return TOOL_ROLES.get(tool, ADMIN_ONLY)
