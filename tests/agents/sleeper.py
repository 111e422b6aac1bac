"""A worker command for tests that takes its time: starts a child (`sleep`, in its process group),
writes "<its pid> <the child's pid>" to payload["pidfile"], sleeps payload["seconds"], then
prints {"slept": seconds}. A worker that kills the whole group leaves neither pid alive."""

import json
import os
import subprocess
import sys
import time

payload = json.load(sys.stdin)["payload"]
child = subprocess.Popen(["sleep", str(payload["seconds"] + 30)])
tmp = payload["pidfile"] + ".tmp"
with open(tmp, "w") as out:
    out.write(f"{os.getpid()} {child.pid}")
os.replace(tmp, payload["pidfile"])  # the reader sees both pids or no file
time.sleep(payload["seconds"])
child.kill()
child.wait()
json.dump({"slept": payload["seconds"]}, sys.stdout)
