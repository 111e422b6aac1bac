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
            AgentInterface(url=f"{base_url}/a2a", protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
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
                id="fleet-status",
                name="Report fleet status",
                description="Agents by status and tasks by status and priority (MCP tool fleet_status).",
                tags=["orchestration", "status"],
                examples=["How busy is the fleet?"],
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
