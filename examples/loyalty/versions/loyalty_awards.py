# keepflow/migrations/versions/loyalty_awards.py
"""loyalty awards

Revision ID: loyalty_awards
Revises: 0013
Create Date: 2026-12-06 07:23:55.386711
"""
from alembic import op
import sqlalchemy as sa


revision = 'loyalty_awards'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('loyalty_awards',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('awarded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('loyalty_awards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_loyalty_awards_customer_id'), ['customer_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('loyalty_awards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_loyalty_awards_customer_id'))

    op.drop_table('loyalty_awards')
