"""API batches queue (states queued and running) and remember whether they replace

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 21:10:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('replaces', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('replaces')
