"""The database: schema, migrations, the job queue and the delivery outbox.

``pacs_node`` and ``worker`` meet here and nowhere else; this package imports neither.
"""
