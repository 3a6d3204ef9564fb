"""The set of policies an installation serves, loaded from the policy directory."""
from __future__ import annotations

from pathlib import Path

from device_ca.errors import DeviceCAError, Kind
from device_ca.policy.model import Policy, load_policy


class Policies:
    def __init__(self, policies: dict[str, Policy]):
        self._policies = dict(sorted(policies.items()))

    @classmethod
    def load(cls, directory: Path) -> "Policies":
        directory = Path(directory)
        if not directory.is_dir():
            raise DeviceCAError(Kind.MALFORMED, f"policy directory {directory} does not exist")
        return cls({p.stem: load_policy(p) for p in directory.glob("*.toml")})

    def get(self, name: str) -> Policy:
        try:
            return self._policies[name]
        except KeyError:
            known = ", ".join(self._policies) or "none"
            raise DeviceCAError(Kind.NOT_FOUND, f"unknown policy {name!r} (known: {known})") from None

    def __iter__(self):
        return iter(self._policies.values())

    def __len__(self) -> int:
        return len(self._policies)
