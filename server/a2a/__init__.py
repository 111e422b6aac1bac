"""The A2A adapter: agent card, executor and task store mapping A2A tasks to orchestrator tasks."""
