"""event routing and webhook deliveries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 17:29:39.481799
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deliveries',
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source', 'id')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deliveries_received_at'), ['received_at'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_id', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('routed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('runs', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_events_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_routed_at'), ['routed_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_routed_at'))
        batch_op.drop_index(batch_op.f('ix_events_order_id'))
        batch_op.drop_column('runs')
        batch_op.drop_column('routed_at')
        batch_op.drop_column('order_id')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_received_at'))

    op.drop_table('deliveries')
