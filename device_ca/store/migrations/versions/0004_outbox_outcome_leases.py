"""outbox outcome and applied time, leases

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 22:30:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('outbox') as batch:
        batch.add_column(sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbox') as batch:
        batch.drop_column('outcome')
        batch.drop_column('applied_at')
    op.drop_table('leases')
