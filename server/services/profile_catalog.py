"""The profile registry's write side: files imported on start, versions registered at runtime,
deprecated and retired, exported, and each name's rollout. Every change takes the registry's turn
(so revisions are handed out in commit order on every replica), bumps the revision marker the
replicas watch, and writes its audit row in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from semantic_version import Version
from sqlalchemy import Connection, func, select, update

from server.clock import Clock, to_iso
from server.domain.principal import SHIPPED, Principal
from server.domain.profile import Profile, ProfileState, Runtime
from server.domain.views import ProfileExport, ProfileList, ProfileView, RolloutView
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.services import audit
from server.services.profiles import ProfileRegistry, parse_profile
from server.store.database import Database
from server.store.dialect import insert_ignoring_duplicates, take_turns
from server.store.tables import profile_rollouts, profiles

PROFILES_TURN = 0x70726F66  # the advisory lock profile changes take on PostgreSQL ("prof")
MAX_DEFINITION_CHARS = 64_000
_STATE_ORDER = {ProfileState.ACTIVE: 0, ProfileState.DEPRECATED: 1, ProfileState.RETIRED: 2}


def _stored(profile: Profile) -> dict[str, Any]:
    """What a row keeps: the validated definition as its author wrote it (defaults left out)."""
    return profile.model_dump(mode="json", exclude_unset=True)


def _same(stored: Mapping[str, Any], profile: Profile) -> bool:
    """Equal in meaning: both validated by this server, so a default added later is no difference."""
    return Profile.model_validate(stored).model_dump(mode="json") == profile.model_dump(mode="json")


def _next_revision(conn: Connection) -> int:
    take_turns(conn, PROFILES_TURN)
    top = conn.execute(
        select(
            select(func.coalesce(func.max(profiles.c.revision), 0)).scalar_subquery(),
            select(func.coalesce(func.max(profile_rollouts.c.revision), 0)).scalar_subquery(),
        )
    ).one()
    return max(int(top[0]), int(top[1])) + 1


def _split(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition("@")
    try:
        Version(version)
    except ValueError:
        raise InvalidInput(f"{ref!r} is not name@version (e.g. reviewer@1.2.0)") from None
    return name, version


def check_may_register(principal: Principal, profile: Profile) -> None:
    """Staff register profiles; what would let the server run a command or hand a server secret
    to a remote peer is the admin's alone, as installing a file is."""
    if not principal.can_operate:
        raise PermissionDenied("profile_register is for admins and operators")
    if principal.is_admin:
        return
    if profile.runtime is Runtime.PROCESS:
        raise PermissionDenied(
            f"profile {profile.ref} has runtime process (the server would run its command); only the admin "
            "registers those"
        )
    if profile.a2a is not None and profile.a2a.token_env is not None:
        raise PermissionDenied(
            f"profile {profile.ref} sends the server's {profile.a2a.token_env} to a peer; only the admin registers that"
        )


def profile_view(row: Any, created: bool | None = None, full: bool = False) -> ProfileView:
    definition = dict(row.definition)
    return ProfileView(
        name=row.name,
        version=row.version,
        ref=f"{row.name}@{row.version}",
        state=row.state,
        source=row.source,
        runtime=definition.get("runtime", Runtime.EXTERNAL.value),
        description=definition.get("description", ""),
        created=created,
        created_by=row.created_by,
        created_at=to_iso(row.created_at) or "",
        updated_at=to_iso(row.updated_at) or "",
        definition=definition if full else None,
    )


def rollout_view(row: Any) -> RolloutView:
    return RolloutView(
        name=row.name,
        versions=dict(row.versions),
        previous=dict(row.previous) if row.previous else None,
        updated_by=row.updated_by,
        updated_at=to_iso(row.updated_at) or "",
    )


class ProfileCatalog:
    def __init__(self, db: Database, clock: Clock, registry: ProfileRegistry) -> None:
        self._db = db
        self._clock = clock
        self._registry = registry

    # -- start -----------------------------------------------------------------------------------
    def import_files(self, found: list[tuple[Path, Profile]]) -> None:
        """Add each file's version (load_profile_folders) to the store once; a file whose version
        is already there with another definition stops the start (versions are immutable), naming
        the file."""
        seen: dict[str, Path] = {}
        for path, profile in found:
            if profile.ref in seen:
                raise InvalidInput(f"profile {profile.ref} is defined twice: {seen[profile.ref]} and {path}")
            seen[profile.ref] = path
        self._db.write_sync(self._import_tx, found)
        self._registry.attach(self._db)
        self._registry.refresh_sync()

    def _import_tx(self, conn: Connection, found: list[tuple[Path, Profile]]) -> None:
        now = self._clock.now_us()
        missing = []
        for path, profile in found:
            row = conn.execute(
                select(profiles.c.definition).where(
                    profiles.c.name == profile.name, profiles.c.version == profile.version
                )
            ).first()
            if row is None:
                missing.append(profile)
            elif not _same(row.definition, profile):
                raise InvalidInput(
                    f"profile {path}: {profile.ref} is already in the store with a different definition; versions "
                    f"are immutable: give the file a new version (or export the stored one with profile_export)"
                )
        if not missing:
            return
        revision = _next_revision(conn)
        for profile in missing:
            values = {
                "name": profile.name,
                "version": profile.version,
                "definition": _stored(profile),
                "state": ProfileState.ACTIVE.value,
                "source": "file",
                "created_by": SHIPPED.id,
                "created_at": now,
                "updated_at": now,
                "revision": revision,
            }
            # Not audited, like the shipped workflow templates: the row itself says it came from a file.
            insert_ignoring_duplicates(conn, profiles, values, ["name", "version"])
            revision += 1

    # -- register and lifecycle ------------------------------------------------------------------
    async def register(self, principal: Principal, definition: dict[str, Any] | str) -> ProfileView:
        if isinstance(definition, str) and len(definition) > MAX_DEFINITION_CHARS:
            raise InvalidInput(f"definition: at most {MAX_DEFINITION_CHARS} characters")
        profile = parse_profile(definition, "definition")
        check_may_register(principal, profile)
        view = await self._db.write(self._register_tx, principal, profile)
        await self._registry.refresh()
        return view

    def _register_tx(self, conn: Connection, principal: Principal, profile: Profile) -> ProfileView:
        where = (profiles.c.name == profile.name, profiles.c.version == profile.version)
        revision = _next_revision(conn)  # the turn first: two registrations of one version take turns
        existing = conn.execute(select(profiles).where(*where)).first()
        if existing is not None:
            if not _same(existing.definition, profile):
                raise Conflict(
                    f"{profile.ref} exists with a different definition; versions are immutable: register a new version"
                )
            return profile_view(existing, created=False, full=True)
        now = self._clock.now_us()
        conn.execute(
            profiles.insert().values(
                name=profile.name,
                version=profile.version,
                definition=_stored(profile),
                state=ProfileState.ACTIVE.value,
                source="registered",
                created_by=principal.id,
                created_at=now,
                updated_at=now,
                revision=revision,
            )
        )
        audit.record(conn, now, principal, "profile.register", profile.ref, {"runtime": profile.runtime.value})
        return profile_view(conn.execute(select(profiles).where(*where)).one(), created=True, full=True)

    async def set_state(self, principal: Principal, ref: str, state: ProfileState) -> ProfileView:
        if not principal.can_operate:
            raise PermissionDenied("changing a profile's state is for admins and operators")
        name, version = _split(ref)
        view = await self._db.write(self._state_tx, principal, name, version, state)
        await self._registry.refresh()
        return view

    def _state_tx(
        self, conn: Connection, principal: Principal, name: str, version: str, state: ProfileState
    ) -> ProfileView:
        where = (profiles.c.name == name, profiles.c.version == version)
        revision = _next_revision(conn)
        row = conn.execute(select(profiles).where(*where)).first()
        if row is None:
            raise NotFound(f"no profile {name}@{version}; profile_list shows what exists")
        current = ProfileState(row.state)
        if current is state:
            return profile_view(row)
        if _STATE_ORDER[state] < _STATE_ORDER[current]:
            raise Conflict(f"profile {name}@{version} is {current.value}; a version never goes back to {state.value}")
        if state is ProfileState.RETIRED:
            rollout = conn.execute(select(profile_rollouts.c.versions).where(profile_rollouts.c.name == name)).first()
            if rollout is not None and rollout.versions.get(version):
                raise Conflict(
                    f"{name}@{version} has {rollout.versions[version]}% of {name}'s rollout; move the rollout "
                    "(profile_rollout_set) before retiring it"
                )
        now = self._clock.now_us()
        conn.execute(update(profiles).where(*where).values(state=state.value, updated_at=now, revision=revision))
        audit.record(
            conn,
            now,
            principal,
            f"profile.{'retire' if state is ProfileState.RETIRED else 'deprecate'}",
            f"{name}@{version}",
            {"from": current.value, "to": state.value},
        )
        return profile_view(conn.execute(select(profiles).where(*where)).one())

    # -- rollout ---------------------------------------------------------------------------------
    async def set_rollout(
        self, principal: Principal, name: str, versions: dict[str, int] | None, rollback: bool
    ) -> RolloutView:
        if not principal.can_operate:
            raise PermissionDenied("profile_rollout_set is for admins and operators")
        if rollback == (versions is not None):
            raise InvalidInput("give versions={…} (percent by version, summing to 100; {} clears it) or rollback=true")
        if versions:
            bad = {
                v: w for v, w in versions.items() if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100
            }
            if bad:
                raise InvalidInput(f"versions: weights are whole percents 0-100; got {bad}")
            if sum(versions.values()) != 100:
                raise InvalidInput(f"versions: the weights sum to {sum(versions.values())}, not 100")
            for version in versions:
                _split(f"{name}@{version}")
        view = await self._db.write(self._rollout_tx, principal, name, versions, rollback)
        await self._registry.refresh()
        return view

    def _rollout_tx(
        self, conn: Connection, principal: Principal, name: str, versions: dict[str, int] | None, rollback: bool
    ) -> RolloutView:
        revision = _next_revision(conn)
        current = conn.execute(select(profile_rollouts).where(profile_rollouts.c.name == name)).first()
        states = {
            row.version: ProfileState(row.state)
            for row in conn.execute(select(profiles.c.version, profiles.c.state).where(profiles.c.name == name))
        }
        if not states:
            raise NotFound(f"no profile {name}; profile_list shows what exists")
        if rollback:
            if current is None or not current.previous:
                raise Conflict(f"{name} has no earlier rollout to go back to")
            wanted: dict[str, int] = dict(current.previous)
        else:
            wanted = {v: w for v, w in (versions or {}).items() if w}
        for version in wanted:
            if version not in states:
                raise InvalidInput(f"{name} has no version {version}; it has {', '.join(sorted(states))}")
            if states[version] is ProfileState.RETIRED:
                raise Conflict(f"{name}@{version} is retired; a rollout names live versions only")
        now = self._clock.now_us()
        before = dict(current.versions) if current is not None and current.versions else None
        values = {"versions": wanted, "previous": before, "updated_by": principal.id, "updated_at": now}
        if current is None:
            conn.execute(profile_rollouts.insert().values(name=name, revision=revision, **values))
        else:  # cleared ({}) stays a row, so a rollback can still return to what it replaced
            conn.execute(
                update(profile_rollouts).where(profile_rollouts.c.name == name).values(revision=revision, **values)
            )
        audit.record(
            conn,
            now,
            principal,
            "profile.rollout",
            name,
            {"versions": wanted, "previous": before, "rollback": rollback},
        )
        return rollout_view(conn.execute(select(profile_rollouts).where(profile_rollouts.c.name == name)).one())

    # -- read ------------------------------------------------------------------------------------
    async def list(self, name: str | None, state: ProfileState | None) -> ProfileList:
        return await self._db.read(self._list_tx, name, state)

    @staticmethod
    def _list_tx(conn: Connection, name: str | None, state: ProfileState | None) -> ProfileList:
        query = select(profiles).order_by(profiles.c.name)
        rollouts = select(profile_rollouts).order_by(profile_rollouts.c.name)
        if name is not None:
            query = query.where(profiles.c.name == name)
            rollouts = rollouts.where(profile_rollouts.c.name == name)
        if state is not None:
            query = query.where(profiles.c.state == state.value)
        rows = sorted(conn.execute(query), key=lambda r: (r.name, [-int(p) for p in r.version.split(".")]))
        return ProfileList(
            profiles=[profile_view(row) for row in rows],
            rollouts=[rollout_view(row) for row in conn.execute(rollouts)],
        )

    async def get(self, ref: str, principal: Principal | None = None) -> ProfileView:
        """One version's full definition; a viewer sees process env values masked (a profile may
        carry a key there), as staff see them."""
        await self._registry.refresh()
        profile = self._registry.require(ref)
        view = await self._db.read(self._get_tx, profile.name, profile.version)
        env = ((view.definition or {}).get("process") or {}).get("env")
        if principal is not None and not principal.can_operate and env and view.definition is not None:
            masked = {**view.definition["process"], "env": dict.fromkeys(env, "***")}
            view = view.model_copy(update={"definition": {**view.definition, "process": masked}})
        return view

    @staticmethod
    def _get_tx(conn: Connection, name: str, version: str) -> ProfileView:
        row = conn.execute(select(profiles).where(profiles.c.name == name, profiles.c.version == version)).first()
        if row is None:
            raise NotFound(f"no profile {name}@{version}")
        return profile_view(row, full=True)

    async def export(self, ref: str) -> ProfileExport:
        view = await self.get(ref)
        definition = view.definition or {}
        return ProfileExport(
            ref=view.ref, yaml=yaml.safe_dump(definition, sort_keys=False, allow_unicode=True), definition=definition
        )
