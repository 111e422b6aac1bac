"""The agent card published at /.well-known/agent-card.json."""

from __future__ import annotations

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)

from server import __version__

TEXT_TASK_TYPE = "text"
TEXT_TASK_CAPABILITY = "general"
FLEET_STATUS_SKILL = "fleet-status"
RUN_WORKFLOW_SKILL = "run-workflow"
JSONRPC_PATH = "/a2a"
REST_PATH = "/a2a/rest"


def build_card(base_url: str) -> AgentCard:
    return AgentCard(
        name="agentfleet orchestrator",
        description=(
            "Orchestrates a fleet of AI agents: queues tasks for agents with the right "
            "capabilities, tracks them to completion, and reports on the fleet."
        ),
        version=__version__,
        provider=AgentProvider(organization="agentfleet", url=base_url),
        supported_interfaces=[
            AgentInterface(url=f"{base_url}{JSONRPC_PATH}", protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=f"{base_url}{REST_PATH}", protocol_binding="HTTP+JSON", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json", "text/plain"],
        skills=[
            AgentSkill(
                id="submit-task",
                name="Submit a task to the fleet",
                description=(
                    "Send a data part holding a task spec {type, payload, capabilities, priority, "
                    "max_attempts, idempotency_key}; an agent with the capabilities runs it. "
                    f"Plain text becomes a task of type '{TEXT_TASK_TYPE}' needing capability "
                    f"'{TEXT_TASK_CAPABILITY}', with the text as payload.text."
                ),
                tags=["orchestration", "tasks"],
                examples=[
                    '{"type": "review", "payload": {"pr": 42}, "capabilities": ["review"]}',
                    "Summarise the open incidents",
                ],
                input_modes=["application/json", "text/plain"],
                output_modes=["application/json"],
            ),
            AgentSkill(
                id=RUN_WORKFLOW_SKILL,
                name="Run a workflow",
                description=(
                    f'Send a data part {{"skill": "{RUN_WORKFLOW_SKILL}", "template": "name@^1" or "definition": '
                    '{...}, "inputs": {...}}: a DAG of fleet tasks with data passing, conditions, fan-out and '
                    "consensus starts at once; the answer is a message holding the run (follow it with the MCP "
                    "tool workflow_get). Shipped templates: research-review-report, compare-providers, "
                    "validate-claim."
                ),
                tags=["orchestration", "workflows"],
                examples=[
                    f'{{"skill": "{RUN_WORKFLOW_SKILL}", "template": "research-review-report@^1", '
                    '"inputs": {"topic": "retries"}}'
                ],
                input_modes=["application/json"],
                output_modes=["application/json", "text/plain"],
            ),
            AgentSkill(
                id=FLEET_STATUS_SKILL,
                name="Report fleet status",
                description=(
                    f'Send a data part {{"skill": "{FLEET_STATUS_SKILL}"}}: the answer is a message (no task) '
                    "with agents by status, tasks by status and priority, and budgets, as a data part."
                ),
                tags=["orchestration", "status"],
                examples=[f'{{"skill": "{FLEET_STATUS_SKILL}"}}'],
                input_modes=["application/json"],
                output_modes=["application/json", "text/plain"],
            ),
        ],
        security_schemes={
            "bearer": SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer", description="agentfleet admin or agent token"
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList(list=[])})],
    )
