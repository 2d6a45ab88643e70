"""job_inputs: the series of a study that fill a model's channels (T1c, T1, T2, FLAIR)

A new table rather than columns on ``jobs``: on SQLite a batch alter rebuilds the table, which fails while
the ``job_delivery`` view references it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_inputs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('channel', sa.String(length=64), nullable=False),
        sa.Column('series_id', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id']),
        sa.ForeignKeyConstraint(['series_id'], ['series.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_job_inputs_job_id', 'job_inputs', ['job_id'], unique=False)
    op.create_index('ix_job_inputs_series_id', 'job_inputs', ['series_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_job_inputs_series_id', table_name='job_inputs')
    op.drop_index('ix_job_inputs_job_id', table_name='job_inputs')
    op.drop_table('job_inputs')
