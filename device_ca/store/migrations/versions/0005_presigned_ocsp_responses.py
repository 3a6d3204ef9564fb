"""pre-signed OCSP responses

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 22:45:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ocsp_responses',
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('responder_id', sa.Integer(), nullable=False),
    sa.Column('this_update', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_update', sa.DateTime(timezone=True), nullable=False),
    sa.Column('der', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['responder_id'], ['ocsp_responders.id'], ),
    sa.ForeignKeyConstraint(['serial'], ['certificates.serial'], ),
    sa.PrimaryKeyConstraint('serial')
    )
    with op.batch_alter_table('ocsp_responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ocsp_responses_this_update'), ['this_update'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ocsp_responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ocsp_responses_this_update'))
    op.drop_table('ocsp_responses')
