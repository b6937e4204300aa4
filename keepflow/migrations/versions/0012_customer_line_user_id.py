"""customers.line_user_id: the address LINE messages go to

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 07:20:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('line_user_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('line_user_id_problem', sa.String(length=255), nullable=True))
        batch_op.create_index('ix_customers_line_user_id', ['line_user_id'])


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_line_user_id')
        batch_op.drop_column('line_user_id_problem')
        batch_op.drop_column('line_user_id')
