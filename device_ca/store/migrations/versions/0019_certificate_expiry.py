"""expiry: when the server handled a good certificate's expiry (audit event, Keycloak disable), and
an index on (status, not_after) for the expiry job and the renewal-window gauges

Certificates already expired keep ``expired_at`` empty: the server's first rounds after the upgrade
handle them (their Keycloak clients were left enabled before).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-12 10:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('certificates', sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_certificates_status_not_after', 'certificates', ['status', 'not_after'])


def downgrade() -> None:
    op.drop_index('ix_certificates_status_not_after', 'certificates')
    with op.batch_alter_table('certificates') as batch:
        batch.drop_column('expired_at')
