"""batch items keep their CSR (a run reads the batch from the database, not from memory)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 02:25:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batch_items') as batch:
        batch.add_column(sa.Column('csr', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batch_items') as batch:
        batch.drop_column('csr')
