"""A small client for the Keycloak Admin REST API (the endpoints device-ca needs, nothing more).

Standard library only: one keep-alive ``http.client`` connection per thread, an admin access
token (password grant for a user, client-credentials grant for a service account) cached until
shortly before it expires and fetched again on a 401. Secrets stay in this object: no error
message, log line or exception carries them.
"""
from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

log = logging.getLogger("device_ca.keycloak")

TOKEN_MARGIN = 10.0      # seconds before expiry at which the admin token is fetched again
PAGE = 100              # full client representations are costly for Keycloak to list


class KeycloakError(Exception):
    """``unavailable``: Keycloak did not answer or answered 5xx (retry later); otherwise it refused."""

    def __init__(self, message: str, *, status: int | None = None, unavailable: bool = False):
        super().__init__(message)
        self.status = status
        self.unavailable = unavailable


@dataclass(frozen=True)
class Credentials:
    """Admin credentials: a user (password grant) or a service-account client (client credentials)."""

    realm: str = "master"
    client_id: str = "admin-cli"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)

    def form(self) -> dict[str, str]:
        if self.username:
            form = {"grant_type": "password", "client_id": self.client_id, "username": self.username,
                    "password": self.password or ""}
        else:
            form = {"grant_type": "client_credentials", "client_id": self.client_id}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        return form


class AdminClient:
    def __init__(self, base_url: str, credentials: Credentials, *, timeout: float = 10.0,
                 ca_file: str | None = None):
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"Keycloak URL {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._prefix = parsed.path
        self._credentials = credentials
        self._timeout = timeout
        self._context = ssl.create_default_context(cafile=ca_file) if parsed.scheme == "https" else None
        self._local = threading.local()
        self._token_lock = threading.Lock()
        self._token: tuple[str, float] | None = None

    # -- transport --------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._context is not None:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                   context=self._context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        """One request; a connection the server closed meanwhile is reopened once."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop_connection()
                if attempt == 2:
                    raise KeycloakError(f"Keycloak at {self.base_url} closed the connection ({type(exc).__name__})",
                                        unavailable=True) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise KeycloakError(f"Keycloak at {self.base_url} unreachable: {reason}", unavailable=True) from None
        raise AssertionError("unreachable")

    def _admin_token(self, refresh: bool = False) -> str:
        with self._token_lock:
            if not refresh and self._token and self._token[1] > time.monotonic():
                return self._token[0]
            form = urllib.parse.urlencode(self._credentials.form()).encode()
            path = f"/realms/{_q(self._credentials.realm)}/protocol/openid-connect/token"
            status, _, data = self._send("POST", path, form, {"Content-Type": "application/x-www-form-urlencoded"})
            if status >= 500:
                raise KeycloakError(f"Keycloak token endpoint answered {status}", status=status, unavailable=True)
            if status != 200:
                raise KeycloakError(f"Keycloak refused the admin credentials for client "
                                    f"{self._credentials.client_id!r} in realm {self._credentials.realm!r} "
                                    f"(HTTP {status})", status=status)
            answer = json.loads(data)
            lifetime = float(answer.get("expires_in", 60))
            self._token = (answer["access_token"], time.monotonic() + max(lifetime - TOKEN_MARGIN, lifetime / 2))
            return self._token[0]

    def request(self, method: str, path: str, body=None, *, expect: tuple[int, ...] = (200,)):
        """JSON in, JSON out; returns (status, parsed body or None, headers). ``expect`` lists the
        statuses that are answers; anything else raises KeycloakError."""
        payload = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._admin_token(refresh=attempt == 2)}",
                       "Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            status, response_headers, data = self._send(method, path, payload, headers)
            if status == 401 and attempt == 1:
                continue
            break
        if status in expect:
            return status, (json.loads(data) if data else None), response_headers
        message = _error_text(data)
        if status >= 500 or status == 429:
            raise KeycloakError(f"Keycloak answered {status} to {method} {path}: {message}", status=status,
                                unavailable=True)
        raise KeycloakError(f"Keycloak refused {method} {path} ({status}): {message}", status=status)

    def close(self) -> None:
        self._drop_connection()

    # -- realms -------------------------------------------------------------------------------

    def realm_exists(self, realm: str) -> bool:
        status, _, _ = self.request("GET", f"/admin/realms/{_q(realm)}", expect=(200, 404))
        return status == 200

    def get_realm(self, realm: str) -> dict | None:
        status, body, _ = self.request("GET", f"/admin/realms/{_q(realm)}", expect=(200, 404))
        return body if status == 200 else None

    def update_realm(self, realm: str, representation: dict) -> None:
        """PUT the given fields; Keycloak leaves the fields not given as they are."""
        self.request("PUT", f"/admin/realms/{_q(realm)}", {"realm": realm, **representation}, expect=(204,))

    def create_realm(self, realm: str, **attributes) -> None:
        self.request("POST", "/admin/realms", {"realm": realm, "enabled": True, **attributes}, expect=(201,))

    def delete_realm(self, realm: str) -> None:
        self.request("DELETE", f"/admin/realms/{_q(realm)}", expect=(204, 404))

    # -- clients -------------------------------------------------------------------------------

    def find_client(self, realm: str, client_id: str) -> dict | None:
        _, found, _ = self.request("GET", f"/admin/realms/{_q(realm)}/clients?clientId={_q(client_id)}")
        exact = [c for c in found or [] if c.get("clientId") == client_id]
        return exact[0] if exact else None

    def clients(self, realm: str) -> list[dict]:
        """Every client of the realm (paged)."""
        result: list[dict] = []
        while True:
            _, page, _ = self.request("GET", f"/admin/realms/{_q(realm)}/clients?first={len(result)}&max={PAGE}")
            result.extend(page or [])
            if not page or len(page) < PAGE:
                return result

    def get_client(self, realm: str, uuid: str) -> dict | None:
        status, client, _ = self.request("GET", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}", expect=(200, 404))
        return client if status == 200 else None

    def create_client(self, realm: str, representation: dict) -> str:
        """Create a client; returns its id (UUID). A clientId that exists raises KeycloakError 409."""
        _, _, headers = self.request("POST", f"/admin/realms/{_q(realm)}/clients", representation, expect=(201,))
        location = headers.get("location", "")
        return location.rstrip("/").rsplit("/", 1)[-1]

    def update_client(self, realm: str, uuid: str, representation: dict) -> None:
        self.request("PUT", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}", representation, expect=(204,))

    def delete_client(self, realm: str, uuid: str) -> None:
        self.request("DELETE", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}", expect=(204, 404))

    def resource_server(self, realm: str, client_id: str) -> str:
        """A resource server's client (client secret, no flows of its own; it introspects device
        tokens), created if missing; returns its secret."""
        found = self.find_client(realm, client_id)
        if found is None:
            self.create_client(realm, {"clientId": client_id, "enabled": True, "publicClient": False,
                                       "clientAuthenticatorType": "client-secret", "standardFlowEnabled": False,
                                       "serviceAccountsEnabled": False, "directAccessGrantsEnabled": False})
            found = self.find_client(realm, client_id)
        _, secret, _ = self.request("GET", f"/admin/realms/{_q(realm)}/clients/{_q(found['id'])}/client-secret")
        return secret["value"]

    def logout_service_account(self, realm: str, uuid: str) -> None:
        """End every session of the client's service account (its refresh tokens and sessions)."""
        status, user, _ = self.request("GET", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/service-account-user",
                                       expect=(200, 400, 404))
        if status == 200 and user and user.get("id"):
            self.request("POST", f"/admin/realms/{_q(realm)}/users/{_q(user['id'])}/logout", expect=(204, 404))

    # -- authentication flows -------------------------------------------------------------------

    def flows(self, realm: str) -> dict[str, dict]:
        _, flows, _ = self.request("GET", f"/admin/realms/{_q(realm)}/authentication/flows")
        return {f["alias"]: f for f in flows or []}

    def create_flow(self, realm: str, alias: str, description: str) -> None:
        self.request("POST", f"/admin/realms/{_q(realm)}/authentication/flows",
                     {"alias": alias, "description": description, "providerId": "basic-flow", "topLevel": True,
                      "builtIn": False}, expect=(201,))

    def executions(self, realm: str, alias: str) -> list[dict]:
        _, found, _ = self.request("GET", f"/admin/realms/{_q(realm)}/authentication/flows/{_q(alias)}/executions")
        return found or []

    def add_execution(self, realm: str, alias: str, provider: str) -> None:
        self.request("POST", f"/admin/realms/{_q(realm)}/authentication/flows/{_q(alias)}/executions/execution",
                     {"provider": provider}, expect=(201,))

    def update_execution(self, realm: str, alias: str, execution: dict) -> None:
        self.request("PUT", f"/admin/realms/{_q(realm)}/authentication/flows/{_q(alias)}/executions", execution,
                     expect=(202, 204))

    def authenticator_config(self, realm: str, config_id: str) -> dict | None:
        status, found, _ = self.request("GET", f"/admin/realms/{_q(realm)}/authentication/config/{_q(config_id)}",
                                        expect=(200, 404))
        return found if status == 200 else None

    def create_authenticator_config(self, realm: str, execution_id: str, alias: str, config: dict) -> None:
        self.request("POST", f"/admin/realms/{_q(realm)}/authentication/executions/{_q(execution_id)}/config",
                     {"alias": alias, "config": config}, expect=(201,))

    def update_authenticator_config(self, realm: str, config_id: str, alias: str, config: dict) -> None:
        self.request("PUT", f"/admin/realms/{_q(realm)}/authentication/config/{_q(config_id)}",
                     {"id": config_id, "alias": alias, "config": config}, expect=(204,))

    # -- a client's own protocol mappers ------------------------------------------------------

    def add_protocol_mapper(self, realm: str, uuid: str, mapper: dict) -> None:
        self.request("POST", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/protocol-mappers/models", mapper,
                     expect=(201,))

    def update_protocol_mapper(self, realm: str, uuid: str, mapper: dict) -> None:
        self.request("PUT", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/protocol-mappers/models/{_q(mapper['id'])}",
                     mapper, expect=(204,))

    def delete_protocol_mapper(self, realm: str, uuid: str, mapper_id: str) -> None:
        self.request("DELETE", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/protocol-mappers/models/{_q(mapper_id)}",
                     expect=(204, 404))

    # -- client scopes ---------------------------------------------------------------------------

    def client_scopes(self, realm: str) -> dict[str, str]:
        """The realm's client scopes, name -> id."""
        _, scopes, _ = self.request("GET", f"/admin/realms/{_q(realm)}/client-scopes")
        return {s["name"]: s["id"] for s in scopes or []}

    def create_client_scope(self, realm: str, name: str) -> str:
        status, _, headers = self.request(
            "POST", f"/admin/realms/{_q(realm)}/client-scopes",
            {"name": name, "protocol": "openid-connect", "attributes": {"include.in.token.scope": "true"}},
            expect=(201, 409))
        if status == 409:
            return self.client_scopes(realm)[name]
        return headers.get("location", "").rstrip("/").rsplit("/", 1)[-1]

    def default_client_scopes(self, realm: str, uuid: str) -> dict[str, str]:
        _, scopes, _ = self.request("GET", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/default-client-scopes")
        return {s["name"]: s["id"] for s in scopes or []}

    def add_default_client_scope(self, realm: str, uuid: str, scope_id: str) -> None:
        self.request("PUT", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/default-client-scopes/{_q(scope_id)}",
                     expect=(204,))

    def remove_default_client_scope(self, realm: str, uuid: str, scope_id: str) -> None:
        self.request("DELETE", f"/admin/realms/{_q(realm)}/clients/{_q(uuid)}/default-client-scopes/{_q(scope_id)}",
                     expect=(204, 404))


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _error_text(data: bytes) -> str:
    try:
        answer = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace").strip() or "no details"
    if isinstance(answer, dict):
        return str(answer.get("errorMessage") or answer.get("error_description") or answer.get("error") or answer)[:200]
    return str(answer)[:200]
