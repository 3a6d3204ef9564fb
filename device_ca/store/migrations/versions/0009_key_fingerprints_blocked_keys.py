"""certificates record the SHA-256 of their SubjectPublicKeyInfo; keys revoked for keyCompromise
are blocked

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:10:00.000000
"""
import hashlib

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('certificates') as batch:
        batch.add_column(sa.Column('spki_sha256', sa.String(length=64), nullable=True))
        batch.create_index('ix_certificates_spki_sha256', ['spki_sha256'])
    op.create_table(
        'blocked_keys',
        sa.Column('spki_sha256', sa.String(length=64), primary_key=True),
        sa.Column('serial', sa.String(length=40), nullable=False),
        sa.Column('blocked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
    )
    connection = op.get_bind()
    certificates = sa.table('certificates', sa.column('serial', sa.String), sa.column('der', sa.LargeBinary),
                            sa.column('spki_sha256', sa.String))
    rows = connection.execute(sa.select(certificates.c.serial, certificates.c.der)).all()
    for serial, der in rows:
        spki = x509.load_der_x509_certificate(bytes(der)).public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        connection.execute(certificates.update().where(certificates.c.serial == serial)
                           .values(spki_sha256=hashlib.sha256(spki).hexdigest()))


def downgrade() -> None:
    op.drop_table('blocked_keys')
    with op.batch_alter_table('certificates') as batch:
        batch.drop_index('ix_certificates_spki_sha256')
        batch.drop_column('spki_sha256')
