"""deployed definitions: every version of sequences.yaml made live, and the definition each run started on

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'definitions',
        sa.Column('version', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('source', sa.Text(), nullable=False),
        sa.Column('diff', sa.Text(), nullable=False),
        sa.Column('deployed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('origin', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('version'),
    )
    op.create_index('ix_definitions_hash', 'definitions', ['hash'])
    op.create_table(
        'definition_sequences',
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('sequence_id', sa.String(length=128), nullable=False),
        sa.Column('snapshot_hash', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['version'], ['definitions.version']),
        sa.PrimaryKeyConstraint('version', 'sequence_id'),
    )
    op.create_index('ix_definition_sequences_hash', 'definition_sequences', ['sequence_id', 'snapshot_hash'])
    with op.batch_alter_table('runs', schema=None) as batch_op:
        # NULL for runs started before versions were kept.
        batch_op.add_column(sa.Column('definition_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('definition_hash')
    op.drop_index('ix_definition_sequences_hash', table_name='definition_sequences')
    op.drop_table('definition_sequences')
    op.drop_index('ix_definitions_hash', table_name='definitions')
    op.drop_table('definitions')
