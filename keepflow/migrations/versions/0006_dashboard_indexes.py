"""dashboard indexes: customers by email, the funnel of a period, notifications by message, orders and runs of a period, one sequence's messages

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 21:50:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _event_message_id() -> str:
    # The same text keepflow.store.models.EventMessageId renders: a query uses an expression index
    # only when it spells the expression the same way.
    if op.get_bind().dialect.name == 'sqlite':
        return "CAST(json_extract(payload, '$.data.message_id') AS TEXT)"
    return "(payload #>> '{data,message_id}')"


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customers_email'), ['email'], unique=False)

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_status'))
        batch_op.create_index('ix_messages_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_messages_created_funnel',
                              ['created_at', 'sequence_id', 'step', 'channel', 'template', 'status', 'id'], unique=False)
        batch_op.create_index('ix_messages_customer_sent', ['customer_id', 'status', 'sent_at'], unique=False)
        batch_op.create_index('ix_messages_sequence_id', ['sequence_id', 'id'], unique=False)
        batch_op.create_index('ix_messages_id', ['id'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_created_at'), ['created_at'], unique=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_started', ['started_at', 'sequence_id', 'converted_at', 'id'], unique=False)

    op.create_index('ix_events_message_id', 'events', [sa.text(_event_message_id()), 'type'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_message_id', table_name='events')

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_started')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_created_at'))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_id')
        batch_op.drop_index('ix_messages_sequence_id')
        batch_op.drop_index('ix_messages_customer_sent')
        batch_op.drop_index('ix_messages_created_funnel')
        batch_op.drop_index('ix_messages_status_created')
        batch_op.create_index(batch_op.f('ix_messages_status'), ['status'], unique=False)

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_email'))
