"""Results: one evaluation's flat metrics (:mod:`.metrics`), their statistics, the loggers
that write them and the report drawn from them. Built on the episode records of
:mod:`syllabus_eval.rollout`; knows nothing of runners or backends."""

from syllabus_eval.results.metrics import EvalResult, MetricsFn, summarize

__all__ = ["EvalResult", "MetricsFn", "summarize"]
