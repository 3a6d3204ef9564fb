"""The OpenAPI 3.1 document of the REST API under /api/v1 (served at /api/v1/openapi.json; checked
by tests/integration/test_operators_api.py against real answers with openapi-core)."""
from __future__ import annotations

from device_ca.ra.authority import REASONS
from device_ca.ra.operators import ROLES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict | str, description: str = "OK") -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schema) if isinstance(schema, str) else schema}}}


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


ERRORS = {"400": _problem("Malformed request"), "401": _problem("No client certificate"),
          "403": _problem("Not an operator, or the role does not allow it"), "404": _problem("Not found"),
          "409": _problem("Conflict with the current state"), "429": _problem("Rate limited"),
          "503": _problem("Database, token or Keycloak unavailable")}


def _operation(summary: str, ok: dict, *, role: str = "viewer", parameters: list | None = None,
               body: str | None = None, status: str = "200") -> dict:
    operation = {"summary": summary, "description": f"Role: {role} or above.", "responses": {status: ok, **ERRORS}}
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": _ref(body)}}}
    return operation


def _path(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


PAGING = [_query("limit", "Items per page (1-500, default 100).", {"type": "integer", "minimum": 1, "maximum": 500}),
          _query("cursor", "The `next` of the page before.")]
SERIAL = _path("serial", "Certificate serial number in hex.")
NULLABLE_STRING = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _page_of(item: str) -> dict:
    return {"type": "object", "required": ["items", "next"],
            "properties": {"items": {"type": "array", "items": _ref(item)}, "next": NULLABLE_STRING}}


SCHEMAS = {
    "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
        "type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"}}},
    "Certificate": {"type": "object", "required": ["serial", "device_id", "policy", "subject", "status", "not_before",
                                                   "not_after", "sha256", "issued_at"], "properties": {
        "serial": {"type": "string", "pattern": "^[0-9a-f]+$"}, "device_id": {"type": "string"},
        "policy": {"type": "string"}, "subject": {"type": "string"},
        "status": {"type": "string", "enum": ["good", "revoked"]}, "not_before": TIME, "not_after": TIME,
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "issued_at": TIME, "revoked_at": NULLABLE_TIME,
        "revocation_reason": NULLABLE_STRING, "superseded_by": NULLABLE_STRING,
        "scope": {"type": "object", "properties": {"policies": {"type": "array", "items": {"type": "string"}},
                                                   "devices": NULLABLE_STRING}},
        "role": {"type": "string", "enum": list(ROLES)}}},
    "CertificatePage": _page_of("Certificate"),
    "Revocation": {"type": "object", "properties": {"reason": {"type": "string", "enum": list(REASONS)}},
                   "additionalProperties": False},
    "Device": {"type": "object", "required": ["device_id", "policy", "status", "certificates"], "properties": {
        "device_id": {"type": "string"}, "policy": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "decommissioned"]},
        "certificates": {"type": "array", "items": _ref("Certificate")}}},
    "Decommissioned": {"type": "object", "required": ["device_id", "status", "revoked"], "properties": {
        "device_id": {"type": "string"}, "status": {"const": "decommissioned"},
        "revoked": {"type": "array", "items": {"type": "string"}}}},
    "TokenRequest": {"type": "object", "required": ["policy", "device_id"], "properties": {
        "policy": {"type": "string"}, "device_id": {"type": "string"},
        "ttl": {"type": "string", "description": "e.g. 30m, 24h, 7d (at most 30d; default 24h)"}}},
    "NewToken": {"type": "object", "required": ["id", "device_id", "policy", "expires_at", "secret"], "properties": {
        "id": {"type": "string"}, "device_id": {"type": "string"}, "policy": {"type": "string"},
        "expires_at": TIME, "secret": {"type": "string", "description": "shown only in this answer"}}},
    "Token": {"type": "object", "required": ["id", "device_id", "policy", "state", "created_at", "expires_at"],
              "properties": {
        "id": {"type": "string"}, "device_id": {"type": "string"}, "policy": {"type": "string"},
        "state": {"type": "string", "enum": ["open", "used", "expired", "withdrawn"]}, "created_at": TIME,
        "created_by": NULLABLE_STRING, "expires_at": TIME, "used_at": NULLABLE_TIME, "serial": NULLABLE_STRING,
        "withdrawn_at": NULLABLE_TIME, "withdrawn_by": NULLABLE_STRING}},
    "TokenPage": _page_of("Token"),
    "Pending": {"type": "object", "required": ["id", "policy", "device_id", "method", "state", "created_at"],
                "properties": {
        "id": {"type": "string"}, "policy": {"type": "string"}, "device_id": {"type": "string"},
        "method": {"type": "string"}, "state": {"type": "string", "enum": ["pending", "approved", "rejected", "issued"]},
        "created_at": TIME, "decided_by": NULLABLE_STRING, "serial": NULLABLE_STRING}},
    "PendingPage": _page_of("Pending"),
    "Policy": {"type": "object", "required": ["name", "subject", "key_types", "validity_days", "enrollment"],
               "properties": {
        "name": {"type": "string"}, "description": NULLABLE_STRING, "subject": {"type": "string"},
        "key_types": {"type": "array", "items": {"type": "string"}}, "san": {"type": "array", "items": {"type": "string"}},
        "eku": {"type": "array", "items": {"type": "string"}}, "validity_days": {"type": "integer"},
        "enrollment": {"type": "array", "items": {"type": "string"}}, "require_approval": {"type": "boolean"},
        "keycloak": {"type": ["object", "null"]}}},
    "PolicyPage": _page_of("Policy"),
    "AuditEvent": {"type": "object", "required": ["seq", "at", "action", "actor", "details", "prev_hash", "hash"],
                   "properties": {
        "seq": {"type": "integer"}, "at": TIME, "action": {"type": "string"}, "actor": {"type": "string"},
        "serial": NULLABLE_STRING, "device_id": NULLABLE_STRING, "details": {"type": "object"},
        "prev_hash": {"type": "string"}, "hash": {"type": "string"}}},
    "AuditPage": _page_of("AuditEvent"),
    "AuditVerification": {"type": "object", "required": ["ok", "events", "head", "checkpoints", "problems"],
                          "properties": {
        "ok": {"type": "boolean"}, "events": {"type": "integer"}, "head": {"type": "string"},
        "checkpoints": {"type": "integer"}, "problems": {"type": "array", "items": {"type": "string"}}}},
    "KeycloakStatus": {"type": "object", "required": ["configured", "pending", "entries"], "properties": {
        "configured": {"type": "boolean"}, "url": NULLABLE_STRING, "pending": {"type": "integer"},
        "oldest_pending": NULLABLE_TIME, "last_applied": NULLABLE_TIME, "last_error": NULLABLE_STRING,
        "last_drain_error": NULLABLE_STRING, "last_drain_error_at": NULLABLE_TIME, "last_sync_at": NULLABLE_TIME,
        "last_sync_error": NULLABLE_STRING, "entries": {"type": "array", "items": {"type": "object"}}}},
    "KeycloakDiff": {"type": "object", "required": ["dry_run", "changes", "summary"], "properties": {
        "dry_run": {"const": True}, "changes": {"type": "array", "items": {"type": "object", "properties": {
            "realm": {"type": "string"}, "client_id": {"type": "string"}, "action": {"type": "string"}}}},
        "summary": {"type": "object", "additionalProperties": {"type": "integer"}}}},
    "Health": {"type": "object", "required": ["status", "checks"], "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string", "enum": ["ok", "unavailable"]}}}},
    "Batch": {"type": "object", "required": ["batch", "policy", "state", "items", "created_at", "created_by"],
              "properties": {
        "batch": {"type": "string"}, "policy": {"type": "string"}, "state": {"type": "string"},
        "items": {"type": "integer"}, "created_at": TIME, "created_by": {"type": "string"},
        "finished_at": NULLABLE_TIME}},
    "BatchPage": _page_of("Batch"),
    "BatchStatus": {"type": "object", "required": ["batch", "policy", "state", "items", "issued", "failed", "pending",
                                                   "reserved", "failures"], "properties": {
        "batch": {"type": "string"}, "policy": {"type": "string"}, "state": {"type": "string"},
        "items": {"type": "integer"}, "issued": {"type": "integer"}, "failed": {"type": "integer"},
        "pending": {"type": "integer"}, "reserved": {"type": "integer"},
        "failures": {"type": "array", "items": {"type": "object", "properties": {
            "device_id": {"type": "string"}, "error": {"type": "string"}}}}}},
}

_PEM = {"description": "The certificate", "content": {"application/x-pem-file": {
    "schema": {"contentMediaType": "application/x-pem-file"}}}}
_DER = {"description": "The certificate (DER)", "content": {"application/pkix-cert": {
    "schema": {"contentMediaType": "application/pkix-cert"}}}}
_BATCH = _path("batch_id", "The batch id.")

PATHS = {
    "/certificates": {"get": _operation("List certificates", _json("CertificatePage"), parameters=[
        _query("status", "good or revoked", {"type": "string", "enum": ["good", "revoked"]}),
        _query("policy", "Device class"), _query("device_id", "Device id"), *PAGING])},
    "/certificates/{serial}": {"get": _operation("Show a certificate", _json("Certificate"), parameters=[SERIAL])},
    "/certificates/{serial}/pem": {"get": _operation("The certificate as PEM", _PEM, parameters=[SERIAL])},
    "/certificates/{serial}/der": {"get": _operation("The certificate as DER", _DER, parameters=[SERIAL])},
    "/certificates/{serial}/revoke": {"post": _operation(
        "Revoke a certificate (keyCompromise: security-officer; it also blocks the key)", _json("Certificate"),
        role="operator", parameters=[SERIAL], body="Revocation")},
    "/devices/{device_id}": {"get": _operation("A device and its certificate history", _json("Device"),
                                               parameters=[_path("device_id", "Device id")])},
    "/devices/{device_id}/decommission": {"post": _operation(
        "Revoke every certificate of the device (cessationOfOperation) and retire it", _json("Decommissioned"),
        role="operator", parameters=[_path("device_id", "Device id")])},
    "/tokens": {
        "get": _operation("List bootstrap tokens (never their secrets)", _json("TokenPage"), parameters=[
            _query("policy", "Device class"), _query("device_id", "Device id"), *PAGING]),
        "post": _operation("Create a one-time bootstrap token; the secret is shown only in this answer",
                           _json("NewToken", "Created"), role="operator", body="TokenRequest", status="201")},
    "/tokens/{token_id}/withdraw": {"post": _operation("Withdraw an unused token", _json("Token"), role="operator",
                                                       parameters=[_path("token_id", "Token id")])},
    "/pending": {"get": _operation("Enrollment requests", _json("PendingPage"), parameters=[
        _query("state", "pending (default), approved, rejected, issued or all",
               {"type": "string", "enum": ["pending", "approved", "rejected", "issued", "all"]}), *PAGING])},
    "/pending/{request_id}/approve": {"post": _operation("Approve a pending enrollment", _json("Pending"),
                                                         role="operator", parameters=[_path("request_id", "Id")])},
    "/pending/{request_id}/reject": {"post": _operation("Reject a pending enrollment", _json("Pending"),
                                                        role="operator", parameters=[_path("request_id", "Id")])},
    "/batches": {"get": _operation("List batches (operators)", _json("BatchPage"), parameters=PAGING),
                 "post": {**_operation("Submit a batch (stations within their scope; operators)",
                                       _json("BatchStatus", "Batch exists already"), role="operator",
                                       parameters=[_query("policy", "Device class"),
                                                   _query("batch_id", "Idempotency key"),
                                                   _query("replace", "true or false")]),
                          "requestBody": {"required": True, "content": {
                              "application/x-ndjson": {"schema": {"type": "string"}},
                              "application/json": {"schema": {"type": "object", "required": ["items"]}}}}}},
    "/batches/{batch_id}": {"get": _operation("A batch's state", _json("BatchStatus"), parameters=[_BATCH])},
    "/batches/{batch_id}/items/{device_id}.pem": {"get": _operation(
        "One issued certificate of a batch", _PEM, parameters=[_BATCH, _path("device_id", "Device id")])},
    "/batches/{batch_id}/archive": {"get": _operation(
        "Every issued certificate and manifest.json as tar.gz",
        {"description": "tar.gz", "content": {"application/gzip": {"schema": {"contentMediaType": "application/gzip"}}}},
        parameters=[_BATCH])},
    "/policies": {"get": _operation("Device-class policies", _json("PolicyPage"))},
    "/policies/{name}": {"get": _operation("One policy", _json("Policy"), parameters=[_path("name", "Policy")])},
    "/audit": {"get": _operation("Audit events in sequence order", _json("AuditPage"), parameters=PAGING)},
    "/audit/verify": {"get": _operation("Verify the audit chain and its signed checkpoints",
                                        _json("AuditVerification"))},
    "/keycloak/status": {"get": _operation("Pending Keycloak changes and the last errors", _json("KeycloakStatus"))},
    "/keycloak/diff": {"get": _operation("What a Keycloak sync would change (dry run)", _json("KeycloakDiff"),
                                         parameters=[_query("all", "true: also the unchanged clients")])},
    "/health": {"get": _operation("Database and token health", _json("Health"))},
    "/openapi.json": {"get": {"summary": "This document", "security": [],
                              "responses": {"200": _json({"type": "object"})}}},
}
PATHS["/batches"]["post"]["responses"]["202"] = _json("BatchStatus", "Batch stored and queued")

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "device-ca operators' API", "version": "1",
             "description": "Certificates, devices, bootstrap tokens, pending enrollments, batches, policies, audit "
                            "and Keycloak for operators holding an operator client certificate (policy admin) with "
                            f"a role ({', '.join(ROLES)}). Errors are RFC 9457 problem details."},
    "servers": [{"url": "/api/v1"}],
    "security": [{"operatorCertificate": []}],
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "securitySchemes": {"operatorCertificate": {
        "type": "mutualTLS", "description": "A client certificate of policy admin issued with a role"}}},
}
