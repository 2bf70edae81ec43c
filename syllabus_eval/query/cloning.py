"""The clone protocol: what a :meth:`~syllabus_eval.Evaluator.detached` clone and a pickled
evaluator take of the original, attribute by attribute, as each class declares it.

Usage::

    import numpy as np
    from syllabus_eval import Evaluator
    from syllabus_eval.query.cloning import Clone

    class NoisyEvaluator(Evaluator):
        clone_rules = {"scale": Clone.SHARE,   # a read-only setting: the same object
                       "rng": "copy",           # its own generator (plain strings work too)
                       "_head": "fresh"}        # a cache: found again in the clone's copy
        _head = None                            # where a "fresh" attribute starts from

        def __init__(self, agent, scale):
            super().__init__(agent)
            self.scale, self.rng = scale, np.random.default_rng(0)

Each class declares the instance attributes it sets in ``clone_rules``; a class's rules are
merged with those of its bases, and the base class declares its own (which no subclass may
declare otherwise). ``detached()`` and pickling refuse an instance attribute declared nowhere
unless its value is immutable (a number, a string, ``None``, a device, a tuple of those), which
a clone can share without harm: mutable state added without a rule fails loudly, naming the
attribute, instead of being shared with the clone by accident.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from syllabus_eval.errors import Choice, bad_argument, check_choice, describe


class Clone(Choice):
    """What a clone (and a pickled copy) takes of one attribute of the original."""

    SHARE = "share"
    """The same object in a clone, and pickled along: read-only settings, configuration."""
    COPY = "copy"
    """A deep copy in a clone, and pickled along: state the clone changes on its own (a random
    generator)."""
    FRESH = "fresh"
    """Not taken: a clone and an unpickled evaluator start from the class attribute of the
    same name (adapters: caches of what was found in the agent copy), or, for the base class's
    own attributes, what the base class builds (its lock, its compiled hooks)."""
    LOCAL = "local"
    """The same object in a clone; left behind when pickled (``None`` on arrival): live
    training objects of this process (the training agent)."""


# Values a clone may share without a rule: nothing can change them in place.
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, range, type, enum.Enum,
              np.generic, torch.device, torch.dtype, type(Ellipsis))


def is_immutable(value: Any) -> bool:
    """Whether nothing can change ``value`` in place (tuples and frozensets: their items)."""
    if isinstance(value, (tuple, frozenset)):
        return all(is_immutable(item) for item in value)
    return isinstance(value, _IMMUTABLE)


def collect_rules(cls: type, managed: Mapping[str, Clone]) -> dict[str, Clone]:
    """The rules of ``cls``: ``managed`` (the base class's own) and every ``clone_rules`` along
    its bases, plain strings read as :class:`Clone` members.

    Raises:
        ValueError: a rule that is none of ``Clone``'s, naming the class and attribute.
        TypeError: a class that declares a base-class attribute otherwise than the base
            class does, or a ``"fresh"`` attribute without a class attribute to start from.
    """
    rules = dict(managed)
    for klass in reversed(cls.__mro__):
        declared = vars(klass).get("clone_rules")
        if declared is None or declared is managed:
            continue
        if not isinstance(declared, Mapping):
            raise bad_argument(f"{klass.__name__}.clone_rules", "a dict {attribute name: "
                               "Clone rule}", declared)
        for name, rule in declared.items():
            where = f"{klass.__name__}.clone_rules[{name!r}]"
            rule = check_choice(where, rule, Clone)
            if name in managed and rule is not managed[name]:
                raise TypeError(f"{where}: {name!r} is the Evaluator base class's own "
                                f"attribute, which it clones as {managed[name].value!r}; "
                                f"leave it out, or name the adapter's attribute otherwise")
            if rule is Clone.FRESH and name not in managed and not hasattr(cls, name):
                raise TypeError(f"{where}: a 'fresh' attribute starts from the class's "
                                f"value; give {klass.__name__} a class attribute {name} "
                                f"(e.g. {name} = None)")
            rules[name] = rule
    return rules


def check_declared(evaluator: Any, rules: Mapping[str, Clone], action: str) -> None:
    """Refuse an instance attribute of ``evaluator`` that ``rules`` do not declare and that
    holds a mutable value: ``action`` (``"detached()"``, ``"pickling"``) would not know
    whether to share it or copy it."""
    for name, value in vars(evaluator).items():
        if name not in rules and not is_immutable(value):
            cls = type(evaluator).__name__
            raise TypeError(
                f"{cls}.{name}: {action} needs a clone rule for every instance attribute "
                f"that holds mutable state, and {name!r} ({describe(value)}) has none; "
                f"declare it in {cls}.clone_rules as 'share' (read-only: the same object), "
                "'copy' (state a clone changes on its own), 'fresh' (a cache, rebuilt from "
                "the class attribute) or 'local' (a live training object, not pickled)")


def cloned_state(evaluator: Any, rules: Mapping[str, Clone], made_apart: set[str]
                 ) -> dict[str, Any]:
    """The instance attributes a :meth:`detached` clone takes from ``evaluator``: shared ones
    as they are, copied ones deep-copied, fresh ones left out (the class gives them), and those
    in ``made_apart``, which the caller makes itself, left out."""
    check_declared(evaluator, rules, "detached()")
    state = {}
    for name, value in vars(evaluator).items():
        rule = rules.get(name, Clone.SHARE)  # undeclared: immutable (checked above)
        if rule is Clone.FRESH or name in made_apart:
            continue
        state[name] = copy.deepcopy(value) if rule is Clone.COPY else value
    return state


def pickled_state(evaluator: Any, rules: Mapping[str, Clone]) -> dict[str, Any]:
    """The instance attributes that travel when ``evaluator`` is pickled: shared and copied
    ones (pickling copies), local ones as ``None``, fresh ones left out."""
    check_declared(evaluator, rules, "pickling")
    state = {}
    for name, value in vars(evaluator).items():
        rule = rules.get(name, Clone.SHARE)
        if rule is not Clone.FRESH:
            state[name] = None if rule is Clone.LOCAL else value
    return state
