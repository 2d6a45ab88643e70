"""The database: schema and migrations, the job queue and the delivery outbox, recording received
instances, what routing is asked and answers, the files under the storage root, the shared vocabulary
(states, image SOP classes, the errors that say retry or not), and read-only views for people.

``pacs_node`` and ``worker`` meet here and nowhere else; this package imports neither.
"""
