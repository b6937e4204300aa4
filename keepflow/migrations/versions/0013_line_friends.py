"""line_friends: who follows the shop's LINE official account, from LINE's webhook

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 12:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('line_friends',
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('followed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('unfollowed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('user_id')
    )


def downgrade() -> None:
    op.drop_table('line_friends')
