"""audit checkpoints: the chain's head signed by the token's audit key

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_checkpoints',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('head_hash', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('signature', sa.LargeBinary(), nullable=False),
    )
    op.create_index('ix_audit_checkpoints_seq', 'audit_checkpoints', ['seq'])


def downgrade() -> None:
    op.drop_index('ix_audit_checkpoints_seq', 'audit_checkpoints')
    op.drop_table('audit_checkpoints')
