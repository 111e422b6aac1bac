"""Profiles: versioned definitions kept in the store (orch_profiles), with the YAML files of the
shipped folder and AGENTFLEET_PROFILES_DIR imported at start (server/services/profile_catalog.py).

ProfileRegistry is each server's index of those rows. It is rebuilt from the store whenever the
store's revision marker (max(revision), one index lookup) moved, so every replica sees a version
registered on another without a restart. A broken file stops the server with an error naming the
file and the field, rather than an agent discovering it later."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError
from semantic_version import NpmSpec, Version
from sqlalchemy import Connection, func, select

from server.domain.profile import Profile, ProfileState
from server.errors import Conflict, InvalidInput, NotFound
from server.store.tables import profile_rollouts, profiles

if TYPE_CHECKING:
    from server.store.database import Database


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


def parse_profile(raw: Any, where: str) -> Profile:
    """A definition (a mapping, or YAML text) validated exactly as a file is."""
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"profile {where}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"profile {where}: expected a mapping at the top level")
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"profile {where}: {_describe(exc)}") from exc


def load_profile_file(path: Path) -> Profile:
    return parse_profile(path.read_text(encoding="utf-8"), str(path))


def load_profile_folders(folders: Iterable[Path]) -> list[tuple[Path, Profile]]:
    found: list[tuple[Path, Profile]] = []
    for folder in folders:
        if not folder.is_dir():
            raise InvalidInput(f"profiles folder {folder} does not exist")
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            found.append((path, load_profile_file(path)))
    return found


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


def _exact(wanted: str) -> bool:
    try:
        Version(wanted)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Rollout:
    versions: dict[str, int]  # version -> percent, summing to 100
    previous: dict[str, int] | None = None


@dataclass(frozen=True)
class _Snapshot:
    """One consistent copy of the registry: swapped whole, so readers never see half a refresh."""

    by_name: dict[str, list[Profile]]  # newest first
    states: dict[str, ProfileState]  # by ref
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    marker: tuple[int, int] | None = None


def _snapshot(
    found: Iterable[Profile],
    states: Mapping[str, ProfileState] | None = None,
    rollouts: Mapping[str, Rollout] | None = None,
    marker: tuple[int, int] | None = None,
) -> _Snapshot:
    by_name: dict[str, list[Profile]] = {}
    for profile in found:
        versions = by_name.setdefault(profile.name, [])
        if any(p.version == profile.version for p in versions):
            raise InvalidInput(f"profile {profile.ref} is defined twice")
        versions.append(profile)
    for versions in by_name.values():
        versions.sort(key=lambda p: p.version_key, reverse=True)
    return _Snapshot(by_name, dict(states or {}), dict(rollouts or {}), marker)


_MARKER = select(
    select(func.coalesce(func.max(profiles.c.revision), 0)).scalar_subquery(),
    select(func.coalesce(func.max(profile_rollouts.c.revision), 0)).scalar_subquery(),
)


class ProfileRegistry:
    """Every profile version this server knows, with its state and each name's rollout."""

    def __init__(
        self,
        found: Iterable[Profile] = (),
        states: Mapping[str, ProfileState] | None = None,
        rollouts: Mapping[str, Rollout] | None = None,
    ) -> None:
        self._now = _snapshot(found, states, rollouts)
        self._db: Database | None = None
        self.rng = random.Random()  # which version a rollout gives a spawn; tests seed it

    @classmethod
    def load(cls, folders: Iterable[Path]) -> ProfileRegistry:
        return cls(profile for _, profile in load_profile_folders(folders))

    # -- keeping up with the store ---------------------------------------------------------------
    def attach(self, db: Database) -> None:
        """Read from this store from now on (refresh, pinned)."""
        self._db = db

    def refresh_from(self, conn: Connection) -> bool:
        """Reload from the store if its marker moved since the last load; True if it did."""
        marker = tuple(conn.execute(_MARKER).one())
        if marker == self._now.marker:
            return False
        found, states = [], {}
        for row in conn.execute(select(profiles.c.definition, profiles.c.state)):
            profile = Profile.model_validate(row.definition)
            found.append(profile)
            states[profile.ref] = ProfileState(row.state)
        rollouts = {
            row.name: Rollout(dict(row.versions), dict(row.previous) if row.previous else None)
            for row in conn.execute(select(profile_rollouts))
            if row.versions
        }
        self._now = _snapshot(found, states, rollouts, (int(marker[0]), int(marker[1])))
        return True

    async def refresh(self) -> None:
        """One indexed read; a reload only when another server (or this one) changed profiles."""
        if self._db is not None:
            await self._db.read(self.refresh_from)

    def refresh_sync(self) -> None:
        if self._db is not None:
            self._db.read_sync(self.refresh_from)

    def has_name(self, name: str) -> bool:
        return name in self._now.by_name

    def knows(self, ref: str) -> bool:
        name, _, version = ref.partition("@")
        return any(p.version == version for p in self._now.by_name.get(name, ()))

    def pinned(self, conn: Connection, name: str, version: str) -> Profile:
        """The exact version an agent was spawned from, reading the store if this server has not
        seen it yet (it was registered on another replica)."""
        ref = f"{name}@{version}"
        if not self.knows(ref):
            self.refresh_from(conn)
        return self.resolve(ref)

    # -- reading ---------------------------------------------------------------------------------
    def state_of(self, profile: Profile) -> ProfileState:
        return self._now.states.get(profile.ref, ProfileState.ACTIVE)

    def rollout_of(self, name: str) -> Rollout | None:
        return self._now.rollouts.get(name)

    def resolve(self, ref: str) -> Profile:
        """`name` picks the newest version; `name@1.2.3` that one; `name@^1` the newest it admits.
        Any state: this is how pinned agents find their definition."""
        name, _, wanted = ref.partition("@")
        versions = self._versions(name)
        if not wanted:
            return versions[0]
        spec = version_range(ref)
        for profile in versions:  # newest first
            if Version(profile.version) in spec:
                return profile
        raise InvalidInput(
            f"profile {name!r} has no version {wanted}; it has " + ", ".join(p.version for p in versions)
        )

    def _versions(self, name: str) -> list[Profile]:
        versions = self._now.by_name.get(name)
        if not versions:
            known = ", ".join(sorted(self._now.by_name)) or "none"
            raise InvalidInput(f"unknown profile {name!r}; known profiles: {known}")
        return versions

    def choose(self, ref: str) -> tuple[Profile, str]:
        """The version a new agent gets, and how it was chosen (rollout, newest, range, exact).
        Retired versions are never chosen; deprecated ones only when named exactly or when no
        active version fits."""
        name, _, wanted = ref.partition("@")
        versions = self._versions(name)
        if wanted and _exact(wanted):
            profile = self.resolve(ref)
            if self.state_of(profile) is ProfileState.RETIRED:
                raise Conflict(f"profile {profile.ref} is retired: no new agents; spawn a newer version")
            return profile, "exact"
        if not wanted and (rollout := self.rollout_of(name)) is not None:
            return self._from_rollout(name, rollout), "rollout"
        spec = version_range(ref)
        admitted = [p for p in versions if Version(p.version) in spec]
        for wanted_state in (ProfileState.ACTIVE, ProfileState.DEPRECATED):
            for profile in admitted:  # newest first
                if self.state_of(profile) is wanted_state:
                    return profile, "range" if wanted else "newest"
        if admitted:
            raise Conflict(
                f"every version of {name!r} that {ref!r} admits is retired ("
                + ", ".join(p.version for p in admitted)
                + "); register or name a live version"
            )
        raise InvalidInput(
            f"profile {name!r} has no version {wanted}; it has " + ", ".join(p.version for p in versions)
        )

    def _from_rollout(self, name: str, rollout: Rollout) -> Profile:
        versions = sorted(rollout.versions)
        weights = [rollout.versions[v] for v in versions]
        version = self.rng.choices(versions, weights=weights)[0]
        return self.resolve(f"{name}@{version}")

    def all(self) -> list[Profile]:
        return [p for versions in self._now.by_name.values() for p in versions]

    def spawnable(self) -> list[Profile]:
        """Every version a new agent may still get (not retired)."""
        return [p for p in self.all() if self.state_of(p) is not ProfileState.RETIRED]

    def autoscaled(self) -> list[Profile]:
        """Of each name, the version spawns naming no version get (newest live, or the rollout's
        first), when it asks for autoscaling."""
        found = []
        for name in self._now.by_name:
            try:
                profile = self.newest_live(name)
            except (InvalidInput, Conflict):
                continue
            if profile.autoscale is not None:
                found.append(profile)
        return found

    def newest_live(self, name: str) -> Profile:
        rollout = self.rollout_of(name)
        if rollout is not None:
            return self.resolve(f"{name}@{max(rollout.versions, key=lambda v: Version(v))}")
        return self.choose(name)[0]

    def payload_runners_only(self, capabilities: Iterable[str]) -> dict[str, list[str]]:
        """Of these capabilities, those that only payload-running profiles declare, with the profiles."""
        found: dict[str, list[str]] = {}
        for capability in capabilities:
            declaring = [p for p in self.all() if capability in p.capabilities]
            if declaring and all(p.executes_payload for p in declaring):
                found[capability] = sorted({p.ref for p in declaring})
        return found

    def capabilities(self) -> frozenset[str]:
        return frozenset(c for p in self.spawnable() for c in p.capabilities)

    def require(self, ref: str) -> Profile:
        try:
            return self.resolve(ref)
        except InvalidInput as exc:
            raise NotFound(exc.message) from exc
