"""Curricula that query the training agent (imported as ``syllabus_eval.curricula``)."""
