"""A worker command for tests: its first attempt at a task fails (a line on stderr, exit 1); later
ones print {"attempt": N, "traceparent": <the TRACEPARENT it was given>}."""

import json
import os
import sys

task = json.load(sys.stdin)
if task["attempts"] == 1:
    sys.stderr.write("first attempt: failing on purpose\n")
    sys.exit(1)
json.dump({"attempt": task["attempts"], "traceparent": os.environ.get("TRACEPARENT")}, sys.stdout)
