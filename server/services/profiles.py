"""Profiles: YAML files loaded at start from the shipped folder and AGENTFLEET_PROFILES_DIR.

A broken file stops the server with an error naming the file and the field, rather than
an agent discovering it later."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import ValidationError

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
        """`name` picks the newest version; `name@1.2.3` picks that one."""
        name, _, version = ref.partition("@")
        versions = self._by_name.get(name)
        if not versions:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise InvalidInput(f"unknown profile {name!r}; known profiles: {known}")
        if not version:
            return versions[0]
        for profile in versions:
            if profile.version == version:
                return profile
        raise InvalidInput(
            f"profile {name!r} has no version {version}; it has " + ", ".join(p.version for p in versions)
        )

    def all(self) -> list[Profile]:
        return [p for versions in self._by_name.values() for p in versions]

    def autoscaled(self) -> list[Profile]:
        """The newest version of each profile that asks for autoscaling."""
        return [versions[0] for versions in self._by_name.values() if versions[0].autoscale is not None]

    def capabilities(self) -> frozenset[str]:
        return frozenset(c for p in self.all() for c in p.capabilities)

    def require(self, ref: str) -> Profile:
        try:
            return self.resolve(ref)
        except InvalidInput as exc:
            raise NotFound(exc.message) from exc
