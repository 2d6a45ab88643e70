"""routing: what rules look at on a series, a peer's own settle time, a job's route, priority, destinations

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

SERIES = [('body_part_examined', 16), ('protocol_name', 64), ('image_type', 128), ('manufacturer', 64),
          ('sop_class_uid', 64), ('calling_ae_title', 16)]


def upgrade() -> None:
    with op.batch_alter_table('series') as batch:
        for name, length in SERIES:
            batch.add_column(sa.Column(name, sa.String(length=length), nullable=False, server_default=''))
        batch.add_column(sa.Column('slice_thickness', sa.Float(), nullable=True))
        batch.add_column(sa.Column('settle_seconds', sa.Float(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('route', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('destinations', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        for name in ('destinations', 'route', 'priority'):
            batch.drop_column(name)
    with op.batch_alter_table('series') as batch:
        for name in ('settle_seconds', 'slice_thickness', *(n for n, _ in reversed(SERIES))):
            batch.drop_column(name)
