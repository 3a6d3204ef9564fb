"""bootstrap tokens withdrawn by an operator: when and by whom

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 10:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('bootstrap_tokens', sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('bootstrap_tokens', sa.Column('withdrawn_by', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bootstrap_tokens') as batch:
        batch.drop_column('withdrawn_by')
        batch.drop_column('withdrawn_at')
