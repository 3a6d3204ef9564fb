"""station certificates carry the scope the operator gave them (device policies, device ids)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 20:50:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Station certificates issued before this revision have no scope, and so authorise no batch
    # until an operator issues them again with --allow-policy.
    op.create_table(
        'station_scopes',
        sa.Column('serial', sa.String(length=40), primary_key=True),
        sa.Column('policies', sa.Text(), nullable=False),
        sa.Column('devices', sa.String(length=256), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('station_scopes')
