"""audit event times are stored in whole seconds, as their hash covers them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:15:00.000000
"""
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The hash of every event already covers its time to the second only; dropping the fraction
    # changes no hash, and from now on a fraction in a stored time means an edited row.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("UPDATE audit_events SET at = substr(at, 1, 19) WHERE length(at) > 19")
    else:
        op.execute("UPDATE audit_events SET at = date_trunc('second', at)")


def downgrade() -> None:
    pass
