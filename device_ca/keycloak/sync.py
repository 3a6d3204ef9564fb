"""Reconcile Keycloak with the fleet: plan the creates, updates and disables, apply them, read back.

One path for a single device (the outbox drainer, after each issuance or revocation) and for the
whole fleet (``device-ca keycloak sync``). Both compare what Keycloak holds with what the store
says and change only what differs, so either can run any number of times.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from cryptography import x509

from device_ca.ca.clock import Clock
from device_ca.errors import DeviceCAError
from device_ca.keycloak.admin import AdminClient, KeycloakError
from device_ca.keycloak.fleet import desired_clients
from device_ca.keycloak.representation import MAPPER_PREFIX, DesiredClient
from device_ca.policy import Policies
from device_ca.policy.model import KeycloakMapping
from device_ca.store import Store

log = logging.getLogger("device_ca.keycloak")

TOPIC_PREFIX = "keycloak."


@dataclass(frozen=True)
class Change:
    """``action``: create, update, disable, unchanged, or absent (to be disabled, and no client exists)."""

    action: str
    desired: DesiredClient
    fields: tuple[str, ...] = ()
    uuid: str | None = None
    actual: dict | None = field(default=None, repr=False, compare=False)

    @property
    def realm(self) -> str:
        return self.desired.realm

    @property
    def client_id(self) -> str:
        return self.desired.client_id

    @property
    def outcome(self) -> str:
        return f"{self.action}: {','.join(self.fields)}" if self.action == "update" and self.fields else self.action

    def describe(self) -> str:
        what = {"create": f"create {self.client_id} (subject {self.desired.subject_dn})",
                "update": f"update {self.client_id}: {', '.join(self.fields)}",
                "disable": f"disable {self.client_id}",
                "unchanged": f"unchanged {self.client_id}",
                "absent": f"absent {self.client_id} (no client to disable)"}[self.action]
        return f"{self.realm}: {what}"


@dataclass(frozen=True)
class Plan:
    changes: list[Change]
    settles: tuple[int, ...]       # the pending outbox rows this plan accounts for


@dataclass
class SyncReport:
    changes: list[Change]
    failures: list[tuple[Change, str]] = field(default_factory=list)
    dry_run: bool = False

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)


class KeycloakSync:
    def __init__(self, admin: AdminClient, store: Store, policies: Policies, trust_anchor: Callable[[], x509.Certificate],
                 clock: Clock, concurrency: int = 8):
        self.admin = admin
        self.store = store
        self.policies = policies
        self._trust_anchor = trust_anchor
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self._scopes: dict[str, dict[str, str]] = {}
        self._scope_lock = threading.Lock()

    # -- desired state ----------------------------------------------------------------------

    def _mapping(self, policy_name: str) -> KeycloakMapping | None:
        try:
            return self.policies.get(policy_name).keycloak
        except DeviceCAError:
            return None

    def desired(self, device_id: str | None = None,
                realms_of_device: dict[str, set[str]] | None = None) -> dict[tuple[str, str], DesiredClient]:
        records = self.store.certificates(device_id=device_id)
        retired = self.store.retired_devices(device_id)
        return desired_clients(records, self._mapping, self._trust_anchor(), self.clock.now(), retired,
                               realms_of_device)

    # -- one device ------------------------------------------------------------------------

    def reconcile_device(self, realm: str, device_id: str, dry_run: bool = False) -> Change:
        """Bring one device's client in one realm in line with the store (the outbox drainer's step)."""
        desired = self.desired(device_id, {device_id: {realm}})[(realm, device_id)]
        try:
            actual = self.admin.find_client(realm, device_id)
        except KeycloakError as exc:
            if exc.status != 404 or self.admin.realm_exists(realm):
                raise
            if desired.enabled:
                raise KeycloakError(_missing_realm([realm]), status=404) from None
            return Change("absent", desired)          # no realm, no client to disable
        change = plan(desired, actual)
        if not dry_run:
            self._apply_and_read_back(change)
        return change

    # -- the whole fleet ---------------------------------------------------------------------

    def plan_fleet(self) -> Plan:
        pending = self.store.queue.pending(TOPIC_PREFIX)
        realms_of_device: dict[str, set[str]] = {}
        for entry in pending:
            if entry.payload.get("realm"):
                realms_of_device.setdefault(entry.device_id, set()).add(entry.payload["realm"])
        desired = self.desired(realms_of_device=realms_of_device)
        changes = []
        realms = {realm for realm, _ in desired}
        missing = self.missing_realms(realms)
        mapped = self.realms() | {realm for (realm, _), want in desired.items() if want.enabled}
        needed = [realm for realm in missing if realm in mapped]
        if needed:
            raise KeycloakError(_missing_realm(needed), status=404)
        for realm in sorted(realms):        # a realm no policy maps to any more, and gone: nothing to disable there
            actual = {} if realm in missing else {c.get("clientId"): c for c in self.admin.clients(realm)}
            for (r, device_id), want in sorted(desired.items()):
                if r == realm:
                    changes.append(plan(want, actual.get(device_id)))
        return Plan(changes, tuple(e.id for e in pending))

    def realms(self) -> set[str]:
        """The realms the policies map devices to."""
        return {p.keycloak.realm for p in self.policies if p.keycloak is not None}

    def missing_realms(self, realms: set[str]) -> list[str]:
        return [realm for realm in sorted(realms) if not self.admin.realm_exists(realm)]

    def sync(self, dry_run: bool = False, on_change: Callable[[Change], None] | None = None,
             planned: Plan | None = None) -> SyncReport:
        """Reconcile every device; the pending outbox rows written before the plan are settled by it."""
        planned = planned or self.plan_fleet()
        changes, settled = planned.changes, planned.settles
        report = SyncReport(changes=changes, dry_run=dry_run)
        if dry_run:
            for change in changes:
                if on_change:
                    on_change(change)
            return report
        todo = [c for c in changes if c.action not in ("unchanged", "absent")]
        for realm in sorted({c.realm for c in todo if c.action in ("create", "update")}):
            self._ensure_scopes(realm, {s for c in todo if c.realm == realm for s in c.desired.default_client_scopes})
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="keycloak-sync") as pool:
            futures = {pool.submit(self._apply_and_read_back, change): change for change in todo}
            for future in concurrent.futures.as_completed(futures):
                change = futures[future]
                try:
                    future.result()
                except KeycloakError as exc:
                    report.failures.append((change, str(exc)))
                if on_change:
                    on_change(change)
        failed_devices = {c.client_id for c, _ in report.failures}
        pending = {e.id: e.device_id for e in self.store.queue.pending(TOPIC_PREFIX)}
        self.store.queue.applied_many([i for i in settled if i in pending and pending[i] not in failed_devices],
                                      self.clock.now(), "sync")
        return report

    # -- applying ------------------------------------------------------------------------------

    def _apply_and_read_back(self, change: Change) -> None:
        uuid = self.apply(change)
        actual = self.admin.get_client(change.realm, uuid) if uuid else None
        self.verify(change, actual)

    def apply(self, change: Change) -> str | None:
        """Make one change; returns the client's id (UUID)."""
        desired = change.desired
        if change.action == "create":
            self._ensure_scopes(desired.realm, set(desired.default_client_scopes))
            try:
                return self.admin.create_client(desired.realm, desired.representation())
            except KeycloakError as exc:
                if exc.status != 409:               # created meanwhile (another drainer, a retried POST)
                    raise
            change = plan(desired, self.admin.find_client(desired.realm, desired.client_id))
            if change.action in ("unchanged", "absent", "create"):
                return change.uuid
        if change.action in ("update", "disable"):
            self.admin.update_client(desired.realm, change.uuid, desired.patched(change.actual))
            if change.action == "disable":          # what Keycloak lets us revoke of what it already issued
                self.admin.logout_service_account(desired.realm, change.uuid)
            self._apply_mappers(desired, change.uuid, change.actual)
            add, remove = desired.scope_changes(_scope_names(change.actual))
            if add or remove:
                scopes = self._ensure_scopes(desired.realm, add)
                current = self.admin.default_client_scopes(desired.realm, change.uuid)
                for name in sorted(add):
                    self.admin.add_default_client_scope(desired.realm, change.uuid, scopes[name])
                for name in sorted(remove):
                    if name in current:
                        self.admin.remove_default_client_scope(desired.realm, change.uuid, current[name])
        return change.uuid

    def _apply_mappers(self, desired: DesiredClient, uuid: str, actual: dict | None) -> None:
        add, update, remove = desired.mapper_changes(actual)
        for mapper in add:
            self.admin.add_protocol_mapper(desired.realm, uuid, mapper)
        for mapper in update:
            self.admin.update_protocol_mapper(desired.realm, uuid, mapper)
        for mapper in remove:
            self.admin.delete_protocol_mapper(desired.realm, uuid, mapper["id"])

    @staticmethod
    def verify(change: Change, actual: dict | None) -> None:
        """Read-back check: after applying, Keycloak holds exactly what was meant."""
        if change.action == "absent" or change.action == "unchanged":
            return
        if actual is None:
            raise KeycloakError(f"{change.realm}/{change.client_id}: client missing after {change.action}")
        left = plan(change.desired, actual)
        if left.action != "unchanged":
            raise KeycloakError(f"{change.realm}/{change.client_id}: still differs after {change.action}: "
                                f"{', '.join(left.fields)}")

    def _ensure_scopes(self, realm: str, names: set[str]) -> dict[str, str]:
        """The realm's client scopes, creating the policy's scopes that are missing."""
        with self._scope_lock:
            known = self._scopes.get(realm)
            if known is None or not names <= set(known):
                known = self.admin.client_scopes(realm)
            for name in sorted(names - set(known)):
                log.info("creating client scope %s in realm %s", name, realm)
                known[name] = self.admin.create_client_scope(realm, name)
            self._scopes[realm] = known
            return known


def _missing_realm(realms: list[str]) -> str:
    return (f"realm {', '.join(realms)} does not exist in Keycloak: create it with 'device-ca keycloak init-realm' "
            f"(or 'keycloak sync --create-realms')")


def plan(desired: DesiredClient, actual: dict | None) -> Change:
    """Compare one client in Keycloak with what it should be."""
    if actual is None:
        return Change("create" if desired.enabled else "absent", desired)
    uuid = actual.get("id")
    if not desired.enabled:
        return Change("disable" if actual.get("enabled", True) else "unchanged", desired, ("enabled",) if
                      actual.get("enabled", True) else (), uuid, actual)
    fields = desired.differences(actual)
    add, remove = desired.scope_changes(_scope_names(actual))
    fields += [f"defaultClientScopes+{s}" for s in sorted(add)] + [f"defaultClientScopes-{s}" for s in sorted(remove)]
    added, updated, removed = desired.mapper_changes(actual)
    fields += [f"protocolMappers+{m['name'][len(MAPPER_PREFIX):]}" for m in added] + \
        [f"protocolMappers~{m['name'][len(MAPPER_PREFIX):]}" for m in updated] + \
        [f"protocolMappers-{m['name'][len(MAPPER_PREFIX):]}" for m in removed]
    return Change("update" if fields else "unchanged", desired, tuple(fields), uuid, actual)


def _scope_names(actual: dict | None) -> set[str]:
    return set((actual or {}).get("defaultClientScopes") or ())
