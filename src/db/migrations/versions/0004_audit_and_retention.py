"""the audit trail, and retention: files purged, rows kept

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

AUDIT_VIEW = """
CREATE VIEW audit AS
SELECT at, actor, kind, outcome, calling_ae_title, address, tls, subject, count, detail FROM audit_events
UNION ALL
SELECT e.at, COALESCE(e.worker, 'queue'), 'job', e.kind, NULL, NULL, NULL, 'job ' || e.job_id, 1,
       COALESCE(e.stage || ' ', '') || e.message
FROM job_events e
"""


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('tls', sa.Boolean(), nullable=True),
    sa.Column('subject', sa.String(length=128), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_events_at', 'audit_events', ['at'], unique=False)
    for table in ('series', 'instances', 'results'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('purged_at', sa.DateTime(), nullable=True))
    op.execute(AUDIT_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW audit")
    for table in ('results', 'instances', 'series'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('purged_at')
    op.drop_index('ix_audit_events_at', table_name='audit_events')
    op.drop_table('audit_events')
