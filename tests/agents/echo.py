"""A worker command for tests: reads the task JSON on stdin, prints {"echo": <its payload>}."""

import json
import sys

task = json.load(sys.stdin)
json.dump({"echo": task["payload"], "task_id": task["id"]}, sys.stdout)
