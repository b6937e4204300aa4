"""runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:40:46.391975
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('sequence_id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('trigger_event_id', sa.String(length=255), nullable=True),
    sa.Column('converted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('converted_event_id', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ix_runs_sequence_customer_started', ['sequence_id', 'customer_id', 'started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_sequence_customer_started')
        batch_op.drop_index(batch_op.f('ix_runs_customer_id'))

    op.drop_table('runs')
