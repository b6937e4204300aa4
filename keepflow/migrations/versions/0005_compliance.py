"""compliance: suppressions, contact problems, the frequency cap's slots, delivery feedback, coupon activation

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 18:59:48.417451
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('suppressions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('scope', sa.String(length=140), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('customer_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lifted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_suppressions_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ux_suppressions_address_scope', ['channel', 'address', 'scope'], unique=True)

    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.add_column(sa.Column('valid_for_seconds', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_problem', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('phone_problem', sa.String(length=255), nullable=True))

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('counted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('delivery_status', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('delivery_detail', sa.Text(), nullable=True))
        batch_op.create_index('ix_messages_customer_counted', ['customer_id', 'channel', 'counted_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_customer_counted')
        batch_op.drop_column('delivery_detail')
        batch_op.drop_column('delivery_status')
        batch_op.drop_column('counted_at')

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('phone_problem')
        batch_op.drop_column('email_problem')

    with op.batch_alter_table('coupons', schema=None) as batch_op:
        batch_op.drop_column('activated_at')
        batch_op.drop_column('valid_for_seconds')

    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.drop_index('ux_suppressions_address_scope')
        batch_op.drop_index(batch_op.f('ix_suppressions_customer_id'))

    op.drop_table('suppressions')
