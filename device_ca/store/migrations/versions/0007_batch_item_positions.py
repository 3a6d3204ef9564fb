"""batch items by position (the bulk run and its manifest go through a batch a page at a time)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 02:20:00.000000
"""
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_batch_items_batch_position', 'batch_items', ['batch_id', 'position'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_batch_items_batch_position', table_name='batch_items')
