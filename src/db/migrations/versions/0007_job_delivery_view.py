"""the job_delivery view: whether a job's results have all reached their destinations, in SQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 04:00:00
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# ``progress`` says what ``jobs.state`` alone cannot: a succeeded job whose SEG or SR still waits for a
# destination is ``delivering``. Withdrawn deliveries (superseded before they were sent) count for neither.
VIEW = """
CREATE VIEW job_delivery AS
SELECT j.id AS job_id, j.state, j.model, s.series_instance_uid,
       COUNT(d.id) AS deliveries,
       SUM(CASE WHEN d.state = 'delivered' THEN 1 ELSE 0 END) AS delivered,
       SUM(CASE WHEN d.state IN ('pending', 'sending') THEN 1 ELSE 0 END) AS waiting,
       CASE WHEN j.state <> 'succeeded' THEN j.state
            WHEN SUM(CASE WHEN d.state IN ('pending', 'sending') THEN 1 ELSE 0 END) > 0 THEN 'delivering'
            WHEN SUM(CASE WHEN d.state = 'delivered' THEN 1 ELSE 0 END) > 0 THEN 'delivered'
            ELSE 'succeeded' END AS progress
FROM jobs j
JOIN series s ON s.id = j.series_id
LEFT JOIN results r ON r.job_id = j.id
LEFT JOIN deliveries d ON d.result_id = r.id
GROUP BY j.id, j.state, j.model, s.series_instance_uid
"""


def upgrade() -> None:
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW job_delivery")
