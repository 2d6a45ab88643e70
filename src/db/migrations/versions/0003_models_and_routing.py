"""several models: why a series went to none, the device a job ran on

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series') as batch:
        batch.add_column(sa.Column('routing_note', sa.Text(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('device', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('device')
    with op.batch_alter_table('series') as batch:
        batch.drop_column('routing_note')
