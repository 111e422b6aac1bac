"""A worker command for tests that does what the task's payload says, and nothing else right:
{"stderr": TEXT} writes TEXT on stderr; {"stdout": TEXT} writes TEXT (not JSON) on stdout;
{"exit": N} exits with status N."""

import json
import sys

payload = json.load(sys.stdin)["payload"]
sys.stderr.write(payload.get("stderr", ""))
sys.stdout.write(payload.get("stdout", ""))
sys.exit(payload.get("exit", 0))
