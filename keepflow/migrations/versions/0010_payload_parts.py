"""payload parts: definition snapshots and run contexts kept once, referenced by hash from Temporal payloads

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 02:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'payload_parts',
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('customer_id', sa.String(length=128), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('hash'),
    )
    op.create_index('ix_payload_parts_customer_id', 'payload_parts', ['customer_id'])


def downgrade() -> None:
    op.drop_index('ix_payload_parts_customer_id', table_name='payload_parts')
    op.drop_table('payload_parts')
