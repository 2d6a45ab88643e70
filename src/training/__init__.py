"""Making and scoring models (``ainode train`` / ``ainode evaluate``): phantoms, training, metrics.

Off the runtime path: the receiver, the worker and the database never import this package.
"""
