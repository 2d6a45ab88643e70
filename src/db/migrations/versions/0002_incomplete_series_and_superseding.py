"""incomplete series and superseding jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series') as batch:
        batch.add_column(sa.Column('incomplete_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('supersedes_job_id', sa.Integer(), nullable=True))
        batch.create_index('ix_jobs_supersedes_job_id', ['supersedes_job_id'], unique=False)
        batch.create_foreign_key('fk_jobs_supersedes_job_id_jobs', 'jobs', ['supersedes_job_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint('fk_jobs_supersedes_job_id_jobs', type_='foreignkey')
        batch.drop_index('ix_jobs_supersedes_job_id')
        batch.drop_column('supersedes_job_id')
    with op.batch_alter_table('series') as batch:
        batch.drop_column('incomplete_reason')
