from device_ca.policy.checks import apply, device_id_from_subject, subject_name
from device_ca.policy.model import KeycloakMapping, Policy, PolicyError, load_policy, parse_duration
from device_ca.policy.registry import Policies

__all__ = ["apply", "device_id_from_subject", "subject_name", "KeycloakMapping", "Policy", "PolicyError",
           "load_policy", "parse_duration", "Policies"]
