"""customer scores

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:12:31.204518
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('customer_scores',
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('recency_days', sa.Integer(), nullable=True),
    sa.Column('orders_count', sa.Integer(), nullable=False),
    sa.Column('monetary', sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column('r', sa.Integer(), nullable=True),
    sa.Column('f', sa.Integer(), nullable=True),
    sa.Column('m', sa.Integer(), nullable=True),
    sa.Column('segment', sa.String(length=32), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('fit', sa.String(length=8), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ),
    sa.PrimaryKeyConstraint('customer_id')
    )
    with op.batch_alter_table('customer_scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customer_scores_fit'), ['fit'], unique=False)
        batch_op.create_index(batch_op.f('ix_customer_scores_segment'), ['segment'], unique=False)

    op.create_table('score_cutoffs',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scored', sa.Integer(), nullable=False),
    sa.Column('recency', sa.JSON(), nullable=False),
    sa.Column('frequency', sa.JSON(), nullable=False),
    sa.Column('monetary', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('score_cutoffs')
    with op.batch_alter_table('customer_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_scores_segment'))
        batch_op.drop_index(batch_op.f('ix_customer_scores_fit'))

    op.drop_table('customer_scores')
