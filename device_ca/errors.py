"""Domain errors: one exception type with a kind, mapped once at each edge (CLI, HTTP, OCSP)."""
from __future__ import annotations

import enum


class Kind(enum.Enum):
    MALFORMED = "malformed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    POLICY_REJECTED = "policy-rejected"
    PENDING = "pending"
    HSM_UNAVAILABLE = "hsm-unavailable"
    DB_UNAVAILABLE = "db-unavailable"
    KEYCLOAK_UNAVAILABLE = "keycloak-unavailable"
    CA_UNAVAILABLE = "ca-unavailable"          # no issuing CA may sign (the one there is was revoked)
    INTERNAL = "internal"


class DeviceCAError(Exception):
    """An error a client may see: ``detail`` is safe to show, ``cause`` is for logs only."""

    def __init__(self, kind: Kind, detail: str, *, cause: BaseException | None = None):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.cause = cause

    def __str__(self) -> str:
        return self.detail


def malformed(detail: str) -> DeviceCAError:
    return DeviceCAError(Kind.MALFORMED, detail)


def rejected(detail: str) -> DeviceCAError:
    return DeviceCAError(Kind.POLICY_REJECTED, detail)
