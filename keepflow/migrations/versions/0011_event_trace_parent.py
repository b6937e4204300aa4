"""events.trace_parent: the request's trace, for routing that happens later

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 07:10:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('trace_parent', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('events') as batch:
        batch.drop_column('trace_parent')
