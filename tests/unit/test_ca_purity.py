"""device_ca.ca must not depend on transport, storage or PKCS#11 (DESIGN.md rules)."""
import json
import subprocess
import sys

FORBIDDEN = ("flask", "sqlmodel", "sqlalchemy", "pkcs11", "hsm", "device_ca.store", "device_ca.web")


def test_ca_package_imports_no_framework():
    code = (
        "import sys, json, pkgutil, importlib, device_ca.ca as ca\n"
        "for m in pkgutil.iter_modules(ca.__path__): importlib.import_module('device_ca.ca.' + m.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "device_ca.ca.issuer" in loaded and "device_ca.ca.lint" in loaded
    offenders = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == []


# -- the import direction: web/cli -> ra -> ca/store/keycloak/policy -> hsm (DESIGN.md) -----------

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "device_ca"
THIRD_PARTY = {"hsm", "flask", "sqlmodel", "sqlalchemy", "pkcs11", "click", "gunicorn", "httptools", "uvloop"}
_BASE = {"errors"}
ALLOWED = {
    "ca": _BASE,
    "errors": set(), "config": _BASE, "runtime": set(), "files": set(), "metrics": _BASE,
    "policy": _BASE | {"ca"},
    "store": _BASE | {"metrics", "sqlalchemy", "sqlmodel"},
    "token": _BASE | {"hsm", "metrics"},
    "keycloak": _BASE | {"ca", "config", "policy", "runtime", "store"},
    "siem": _BASE | {"ca", "config", "runtime", "store"},
    "ra": _BASE | {"ca", "config", "files", "keycloak", "metrics", "policy", "runtime", "store", "token"},
    "services": _BASE | {"ca", "config", "hsm", "keycloak", "policy", "ra", "siem", "store", "token"},
    "web": _BASE | {"ca", "config", "files", "flask", "gunicorn", "hsm", "httptools", "keycloak", "metrics", "policy", "ra",
                    "runtime", "services", "siem", "store", "token", "uvloop"},
    "cli": _BASE | {"ca", "click", "config", "files", "keycloak", "policy", "ra", "services", "siem", "store", "web"},
}
# The composition root is built only by the command line and by the server's process factories.
ROOT_USERS = ("cli.", "web.server")


def imports_by_layer(package: Path = PACKAGE) -> dict[tuple[str, str], set[str]]:
    """(layer, module) -> the layers and third-party packages it imports, lazy imports included."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in package.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(package).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        layer = parts[0] if len(parts) > 1 else parts[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top, _, rest = name.partition(".")
                if top == "device_ca" and rest:
                    targets.add(rest.split(".")[0])
                elif top in THIRD_PARTY:
                    targets.add(top)
        found[(layer, module)] = targets - {layer}
    return found


def violations(found: dict[tuple[str, str], set[str]]) -> list[str]:
    out = []
    for (layer, module), targets in sorted(found.items()):
        for target in sorted(targets - ALLOWED.get(layer, set())):
            out.append(f"device_ca.{module} imports {target}")
        if "services" in targets and not module.startswith(ROOT_USERS):
            out.append(f"device_ca.{module} imports the composition root")
    return out


def test_imports_follow_the_layers():
    found = imports_by_layer()
    assert ("ra", "ra.issuance") in found and "store" in found[("ra", "ra.issuance")]
    assert violations(found) == []


def test_an_import_against_the_direction_is_caught(tmp_path):
    (tmp_path / "ra").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "ra" / "pipeline.py").write_text("def f():\n    from device_ca.web import server\n")
    (tmp_path / "store" / "repo.py").write_text("from device_ca.ra.issuance import Order\n")
    assert violations(imports_by_layer(tmp_path)) == ["device_ca.ra.pipeline imports web",
                                                      "device_ca.store.repo imports ra"]


def test_hsm_knows_nothing_of_device_ca():
    hsm = PACKAGE.parent / "hsm"
    for path in hsm.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("device_ca"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("device_ca") for a in node.names), path
