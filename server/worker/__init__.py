"""`agentfleet worker [--profile P] -- CMD ARGS…`: a pull worker that runs CMD once per claimed task.

Modules: client (the MCP calls it makes, over Streamable HTTP), command (one run of CMD in its own
process group), supervise (one task: heartbeats, cancel, timeout, report), loop (registration,
claims, drain on SIGTERM). Imports stay light: a spawned agent's first call is its heartbeat.
"""
