"""Workflow templates: named, semver-versioned, immutable definitions. A reference is `name` (the
newest release), `name@1.2.0` (exactly that) or `name@<npm-style range>` (`^1`, `~1.2`,
`>=1.0.0 <2.0.0`), resolved to the newest version the range admits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semantic_version import NpmSpec, Version
from sqlalchemy import Connection, select, update

from server.clock import Clock, to_iso
from server.domain.principal import SHIPPED, Principal
from server.domain.profile import ProfileState
from server.domain.views import WorkflowTemplateList, WorkflowTemplateSummary, WorkflowTemplateView
from server.domain.workflow_definition import WorkflowDefinition, parse_definition
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.services import audit
from server.store.database import Database
from server.store.dialect import insert_ignoring_duplicates
from server.store.tables import workflow_templates


def shipped_templates_dir() -> Path:
    """workflows/ in a checkout; server/shipped_workflows/ in an installed wheel."""
    for candidate in (Path(__file__).parents[2] / "workflows", Path(__file__).parents[1] / "shipped_workflows"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the shipped workflow templates are missing from this installation")


def split_ref(ref: str) -> tuple[str, str | None]:
    name, _, wanted = ref.partition("@")
    if not name:
        raise InvalidInput(f"template reference {ref!r} has no name; write name, name@1.2.0 or name@^1")
    return name, wanted or None


def resolve_template(conn: Connection, ref: str) -> tuple[dict[str, Any], str]:
    """(the definition, "name@version") of the newest version `ref` admits: an active one, else a
    deprecated one; a version named exactly may be deprecated; a retired version never runs."""
    name, wanted = split_ref(ref)
    rows = conn.execute(
        select(workflow_templates.c.version, workflow_templates.c.definition, workflow_templates.c.state).where(
            workflow_templates.c.name == name
        )
    ).all()
    if not rows:
        raise NotFound(f"no workflow template {name}; save one with workflow_template_save")
    by_version = {Version(row.version): row for row in rows}
    try:
        spec = NpmSpec(wanted or "*")
    except ValueError as exc:
        raise InvalidInput(f"template reference {ref!r}: {exc}; write name@1.2.0, name@^1 or name@~1.2") from exc
    admitted = [v for v in by_version if v in spec]
    if not admitted:
        known = ", ".join(str(v) for v in sorted(by_version))
        raise NotFound(f"no version of {name} matches {wanted}; there are {known}")
    for state in (ProfileState.ACTIVE, ProfileState.DEPRECATED):  # one version named exactly: either state
        live = [v for v in admitted if by_version[v].state == state.value]
        if live:
            best = max(live)
            return by_version[best].definition, f"{name}@{best}"
    raise Conflict(
        f"{name}: every version {wanted or ''} admits is retired ({', '.join(str(v) for v in sorted(admitted))}); "
        "save a new version"
    )


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except ValueError:
        return False
    return True


def _version(text: str) -> str:
    try:
        return str(Version(text))
    except ValueError as exc:
        raise InvalidInput(f"version {text!r} is not semver (MAJOR.MINOR.PATCH, e.g. 1.2.0)") from exc


class WorkflowTemplateService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def save(
        self, principal: Principal, definition: str | dict[str, Any], version: str | None
    ) -> WorkflowTemplateView:
        parsed = parse_definition(definition)
        if version is None and parsed.version is None:
            raise InvalidInput("a template needs a version: pass version=, or put version: in the definition")
        if version is not None and parsed.version is not None and _version(version) != _version(parsed.version):
            raise InvalidInput(f"version={version} disagrees with the definition's version {parsed.version}")
        chosen = _version(version or parsed.version or "")
        body = _stored(parsed, chosen)
        return await self._db.write(self._save_tx, principal, parsed.name, chosen, body)

    def _save_tx(
        self, conn: Connection, principal: Principal, name: str, version: str, body: dict[str, Any]
    ) -> WorkflowTemplateView:
        existing = conn.execute(
            select(workflow_templates).where(workflow_templates.c.name == name, workflow_templates.c.version == version)
        ).first()
        if existing is not None:
            if existing.definition != body:
                raise Conflict(
                    f"{name}@{version} exists with a different definition; versions are immutable: save a new version"
                )
            return _view(existing, created=False)
        now = self._clock.now_us()
        values = {"name": name, "version": version, "definition": body, "created_by": principal.id, "created_at": now}
        conn.execute(workflow_templates.insert().values(values))
        audit.record(conn, now, principal, "workflow.template_save", f"{name}@{version}", {"steps": len(body["steps"])})
        row = conn.execute(
            select(workflow_templates).where(workflow_templates.c.name == name, workflow_templates.c.version == version)
        ).one()
        return _view(row, created=True)

    async def list(self) -> WorkflowTemplateList:
        """Every template name with its versions (newest first) and the newest version's inputs."""
        return await self._db.read(self._list_tx)

    @staticmethod
    def _list_tx(conn: Connection) -> WorkflowTemplateList:
        rows = conn.execute(select(workflow_templates).order_by(workflow_templates.c.name)).all()
        by_name: dict[str, list[Any]] = {}
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
        summaries = []
        for name, versions in by_name.items():
            versions.sort(key=lambda r: Version(r.version), reverse=True)
            newest = versions[0].definition
            summaries.append(
                WorkflowTemplateSummary(
                    name=name,
                    versions=[r.version for r in versions],
                    description=newest.get("description"),
                    inputs=sorted(newest.get("inputs", {})),
                    steps=[step["id"] for step in newest["steps"]],
                )
            )
        return WorkflowTemplateList(templates=summaries)

    async def get(self, ref: str) -> WorkflowTemplateView:
        """One template version: `name` (newest), `name@1.2.0` or a range such as `name@^1`."""
        return await self._db.read(self._get_tx, ref)

    @staticmethod
    def _get_tx(conn: Connection, ref: str) -> WorkflowTemplateView:
        _, resolved = resolve_template(conn, ref)
        name, version = resolved.rsplit("@", 1)
        row = conn.execute(
            select(workflow_templates).where(workflow_templates.c.name == name, workflow_templates.c.version == version)
        ).one()
        return _view(row, created=False)

    async def set_state(self, principal: Principal, ref: str, state: ProfileState) -> WorkflowTemplateView:
        if not principal.can_operate:
            raise PermissionDenied("changing a template's state is for admins and operators")
        name, wanted = split_ref(ref)
        if wanted is None or not _is_version(wanted):
            raise InvalidInput(f"{ref!r} is not name@version (e.g. research-review-report@1.0.0)")
        return await self._db.write(self._state_tx, principal, name, str(Version(wanted)), state)

    def _state_tx(
        self, conn: Connection, principal: Principal, name: str, version: str, state: ProfileState
    ) -> WorkflowTemplateView:
        where = (workflow_templates.c.name == name, workflow_templates.c.version == version)
        row = conn.execute(select(workflow_templates).where(*where)).first()
        if row is None:
            raise NotFound(f"no workflow template {name}@{version}; workflow_template_list shows what exists")
        order = list(ProfileState)
        current = ProfileState(row.state)
        if current is state:
            return _view(row, created=False)
        if order.index(state) < order.index(current):
            raise Conflict(f"template {name}@{version} is {current.value}; a version never goes back to {state.value}")
        now = self._clock.now_us()
        conn.execute(update(workflow_templates).where(*where).values(state=state.value))
        action = "workflow.template_retire" if state is ProfileState.RETIRED else "workflow.template_deprecate"
        audit.record(conn, now, principal, action, f"{name}@{version}", {"from": current.value, "to": state.value})
        return _view(conn.execute(select(workflow_templates).where(*where)).one(), created=False)

    def seed_shipped(self, folder: Path) -> None:
        """Make the shipped templates available on this store (once per version; never replaced)."""
        now = self._clock.now_us()
        bodies = []
        for path in sorted(folder.glob("*.yaml")):
            parsed = parse_definition(path.read_text(encoding="utf-8"))  # the definitions' own safe YAML loader
            version = _version(parsed.version or "")
            bodies.append((parsed.name, version, _stored(parsed, version)))

        def seed(conn: Connection) -> None:
            for name, version, body in bodies:
                values = {
                    "name": name,
                    "version": version,
                    "definition": body,
                    "created_by": SHIPPED.id,
                    "created_at": now,
                }
                insert_ignoring_duplicates(conn, workflow_templates, values, ["name", "version"])

        self._db.write_sync(seed)


def _stored(parsed: WorkflowDefinition, version: str) -> dict[str, Any]:
    """The definition as a template row keeps it: validated, with its normalised version."""
    return parsed.model_dump(mode="json", exclude_none=True) | {"version": version}


def _view(row: Any, created: bool) -> WorkflowTemplateView:
    return WorkflowTemplateView(
        state=row.state,
        name=row.name,
        version=row.version,
        ref=f"{row.name}@{row.version}",
        created=created,
        created_by=row.created_by,
        created_at=to_iso(row.created_at),
        steps=[step["id"] for step in row.definition["steps"]],
        definition=row.definition,
    )
