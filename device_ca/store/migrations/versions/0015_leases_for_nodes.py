"""several nodes: lease history (who held a lease when), the time a lease was taken, and the
rate-limit buckets every node shares (UNLOGGED on PostgreSQL)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 03:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('leases', sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'lease_history',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=False),
        sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('previous_holder', sa.String(length=128), nullable=True),
        sa.Column('previous_expires_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_lease_history_name', 'lease_history', ['name'])
    op.create_table(
        'rate_buckets',
        sa.Column('key', sa.String(length=64), primary_key=True),
        sa.Column('tokens', sa.Float(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('allowed', sa.Boolean(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE rate_buckets SET UNLOGGED")


def downgrade() -> None:
    op.drop_table('rate_buckets')
    op.drop_index('ix_lease_history_name', 'lease_history')
    op.drop_table('lease_history')
    op.drop_column('leases', 'acquired_at')
