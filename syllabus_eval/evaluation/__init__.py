"""The evaluation layer: the :class:`~syllabus_eval.evaluation.runner.EvalRunner` facade and
the parts it is built from (settings, jobs, schedule, snapshots, tracking, checkpoints,
observation normalisation) and the backends that run evaluations (thread, process, Ray)."""
