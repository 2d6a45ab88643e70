"""The worker: turns a claimed job into result files, one stage per subpackage.

``assembly`` (stored instances → volume), ``models`` (volume → labels, whatever the kind of model),
``results`` (labels → findings → SEG and SR); ``pipeline`` runs the stages for one job and ``runner``
claims jobs from the queue and records their outcome.
"""
