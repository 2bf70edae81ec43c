"""The query core: the :class:`~syllabus_eval.query.evaluator.Evaluator` template that adapters
fill in, the protocols curricula program against, tear-free weight sync, input preparation,
``torch.compile`` and device support. Nothing here knows episodes, results or backends."""
