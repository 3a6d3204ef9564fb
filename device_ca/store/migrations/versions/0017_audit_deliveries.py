"""audit deliveries: a receiver's cursor in the audit chain (the SIEM webhook)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 10:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_deliveries',
        sa.Column('name', sa.String(length=64), primary_key=True),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.String(length=1024), nullable=True),
        sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('audit_deliveries')
