"""bulk batches and their items

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 23:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batches',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('policy', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('input_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.Column('keygen', sa.Boolean(), nullable=False),
    sa.Column('secret_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('batch_items',
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('csr_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('not_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ),
    sa.PrimaryKeyConstraint('batch_id', 'device_id')
    )
    with op.batch_alter_table('batch_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_items_state'), ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('batch_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_items_state'))
    op.drop_table('batch_items')
    op.drop_table('batches')
