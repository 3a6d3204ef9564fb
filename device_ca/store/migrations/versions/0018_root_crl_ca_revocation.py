"""root CRL and issuing-CA revocation: a CA certificate's state (active | revoked, when, why), and
CRLs numbered per CA (the root's CRL numbers start at 1 beside the issuing CA's)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 10:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ca_certificates') as batch:
        batch.add_column(sa.Column('status', sa.String(length=16), nullable=False, server_default='active'))
        batch.add_column(sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('revocation_reason', sa.String(length=32), nullable=True))
    _crls_primary_key(['ca', 'number'])


def downgrade() -> None:
    op.execute("DELETE FROM crls WHERE ca <> 'issuing'")
    _crls_primary_key(['number'])
    with op.batch_alter_table('ca_certificates') as batch:
        batch.drop_column('revocation_reason')
        batch.drop_column('revoked_at')
        batch.drop_column('status')


def _crls_primary_key(columns: list[str]) -> None:
    """Copy ``crls`` into a table with the new primary key (portable: SQLite cannot alter one)."""
    op.create_table(
        'crls_new',
        sa.Column('ca', sa.String(length=64), nullable=False),
        sa.Column('number', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('this_update', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_update', sa.DateTime(timezone=True), nullable=False),
        sa.Column('entries', sa.Integer(), nullable=False),
        sa.Column('der', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint(*columns, name='pk_crls_' + '_'.join(columns)),
    )
    op.execute("INSERT INTO crls_new (ca, number, this_update, next_update, entries, der) "
               "SELECT ca, number, this_update, next_update, entries, der FROM crls")
    op.drop_table('crls')
    op.rename_table('crls_new', 'crls')
