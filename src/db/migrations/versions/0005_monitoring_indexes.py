"""indexes the status page and /metrics read by: jobs by creation time, deliveries by state and destination

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:00:00
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_created_at', 'jobs', ['created_at'], unique=False)
    op.create_index('ix_deliveries_state_destination', 'deliveries', ['state', 'destination'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_deliveries_state_destination', table_name='deliveries')
    op.drop_index('ix_jobs_created_at', table_name='jobs')
