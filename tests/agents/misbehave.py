"""A worker command for tests that does what the task's payload says, and nothing else right:
{"stderr": TEXT} writes TEXT on stderr; {"stdout": TEXT} writes TEXT (not JSON) on stdout;
{"exit": N} exits with status N; {"nul": true} first writes a stderr line holding a NUL byte (a
task payload cannot carry one)."""

import json
import sys

payload = json.load(sys.stdin)["payload"]
if payload.get("nul"):
    sys.stderr.write("before\x00after\n")
sys.stderr.write(payload.get("stderr", ""))
sys.stdout.write(payload.get("stdout", ""))
sys.exit(payload.get("exit", 0))
