"""Profiles: YAML files loaded at start from the shipped folder and AGENTFLEET_PROFILES_DIR.

A broken file stops the server with an error naming the file and the field, rather than
an agent discovering it later."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import ValidationError
from semantic_version import NpmSpec, Version

from server.domain.profile import Profile
from server.errors import InvalidInput, NotFound


def shipped_profiles_dir() -> Path:
    """`profiles/` in a source checkout; `server/shipped_profiles/` in an installed wheel."""
    installed = Path(__file__).resolve().parents[1] / "shipped_profiles"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "profiles"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"field '{where}': {item['msg']}")
    return "; ".join(parts)


def load_profile_file(path: Path) -> Profile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"profile {path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"profile {path}: expected a mapping at the top level")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"profile {path}: {_describe(exc)}") from exc


def version_range(ref: str) -> NpmSpec:
    """The versions `name@…` admits: an exact version, an npm-style range, or any (`*`)."""
    wanted = ref.partition("@")[2] or "*"
    try:
        return NpmSpec(wanted)
    except ValueError as exc:
        raise InvalidInput(f"profile reference {ref!r}: {exc}; write name, name@1.2.0 or name@^1") from exc


def admits(entry: str, profile: Profile) -> bool:
    """Whether a spawn-list entry (`name` or `name@range`) names this profile version."""
    name = entry.partition("@")[0]
    return name == profile.name and Version(profile.version) in version_range(entry)


class ProfileRegistry:
    def __init__(self, profiles: Iterable[Profile]) -> None:
        self._by_name: dict[str, list[Profile]] = {}
        for profile in profiles:
            versions = self._by_name.setdefault(profile.name, [])
            if any(p.version == profile.version for p in versions):
                raise InvalidInput(f"profile {profile.ref} is defined twice")
            versions.append(profile)
        for versions in self._by_name.values():
            versions.sort(key=lambda p: p.version_key, reverse=True)

    @classmethod
    def load(cls, folders: Iterable[Path]) -> ProfileRegistry:
        found: list[Profile] = []
        for folder in folders:
            if not folder.is_dir():
                raise InvalidInput(f"profiles folder {folder} does not exist")
            for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
                found.append(load_profile_file(path))
        return cls(found)

    def resolve(self, ref: str) -> Profile:
        """`name` picks the newest version; `name@1.2.3` that one; `name@^1` the newest it admits."""
        name, _, wanted = ref.partition("@")
        versions = self._by_name.get(name)
        if not versions:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise InvalidInput(f"unknown profile {name!r}; known profiles: {known}")
        if not wanted:
            return versions[0]
        spec = version_range(ref)
        for profile in versions:  # newest first
            if Version(profile.version) in spec:
                return profile
        raise InvalidInput(
            f"profile {name!r} has no version {wanted}; it has " + ", ".join(p.version for p in versions)
        )

    def all(self) -> list[Profile]:
        return [p for versions in self._by_name.values() for p in versions]

    def autoscaled(self) -> list[Profile]:
        """The newest version of each profile that asks for autoscaling."""
        return [versions[0] for versions in self._by_name.values() if versions[0].autoscale is not None]

    def payload_runners_only(self, capabilities: Iterable[str]) -> dict[str, list[str]]:
        """Of these capabilities, those that only payload-running profiles declare, with the profiles."""
        found: dict[str, list[str]] = {}
        for capability in capabilities:
            declaring = [p for p in self.all() if capability in p.capabilities]
            if declaring and all(p.executes_payload for p in declaring):
                found[capability] = sorted({p.ref for p in declaring})
        return found

    def capabilities(self) -> frozenset[str]:
        return frozenset(c for p in self.all() for c in p.capabilities)

    def require(self, ref: str) -> Profile:
        try:
            return self.resolve(ref)
        except InvalidInput as exc:
            raise NotFound(exc.message) from exc
