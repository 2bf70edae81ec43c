"""Curricula hosted off the training process: a worker process on this machine
(:class:`LocalCurriculumServer`) or a Ray actor anywhere in a cluster
(:class:`RayCurriculumServer`), fed and drawn from by
:class:`~syllabus_eval.curricula.CurriculumWrapper` s through ``server.client``.

Usage::

    from syllabus_eval.curricula import CurriculumWrapper, LocalCurriculumServer

    with LocalCurriculumServer(make_plr, agent=agent) as server:   # or RayCurriculumServer
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(make_env(), server.client)] * 4)
        ...
        envs.close()
        print(server.task_scores())

One host (:mod:`~syllabus_eval.curricula.hosted.host`), two transports
(:mod:`~syllabus_eval.curricula.hosted.process`, :mod:`~syllabus_eval.curricula.hosted.ray`),
one client logic (:mod:`~syllabus_eval.curricula.hosted.client`: batches, draws ahead,
failures) and weights that arrive whole (:mod:`~syllabus_eval.curricula.hosted.weights`).
"""

from .client import HostedClient
from .host import HostedServer
from .process import LocalCurriculumClient, LocalCurriculumServer
from .ray import RayCurriculumClient, RayCurriculumServer

__all__ = ["HostedClient", "HostedServer", "LocalCurriculumClient", "LocalCurriculumServer",
           "RayCurriculumClient", "RayCurriculumServer"]
