"""operator certificates (policy admin) carry the role the operator was given when they were issued

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 06:20:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'operator_roles',
        sa.Column('serial', sa.String(length=40), primary_key=True),
        sa.Column('role', sa.String(length=32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('operator_roles')
