"""How agents run: OS processes (process.py) under a supervisor (supervisor.py), A2A peers."""
