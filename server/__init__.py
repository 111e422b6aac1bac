"""agentfleet: an orchestration server for fleets of AI agents."""

__version__ = "0.8.0"
