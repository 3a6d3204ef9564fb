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
