"""Error wording: what came is described by its value where it has one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from syllabus_eval import EnvSpec
from syllabus_eval.errors import bad_argument


@pytest.mark.parametrize(("value", "shown"), [
    (np.float32("nan"), "got float32 nan"),
    (np.int64(-3), "got int64 -3"),
    (torch.tensor(2.5), "got Tensor 2.5 of dtype torch.float32"),
    (np.zeros((2, 3)), "got ndarray of shape (2, 3) and dtype float64"),
    (-1, "got int -1"),
])
def test_scalars_are_shown_by_value_arrays_by_shape(value, shown):
    assert str(bad_argument("x", "a number", value)) == f"x: expected a number, {shown}"


def test_argument_errors_carry_the_name_rename_and_travel_pickled():
    import pickle

    from syllabus_eval import EvalRunner
    from syllabus_eval.errors import ArgumentError

    with pytest.raises(ArgumentError) as caught:
        EvalRunner(EnvSpec(lambda: None, num_envs=-1), None)
    error = caught.value
    assert isinstance(error, ValueError)  # what user code catches keeps working
    assert (error.argument, error.message) == ("num_envs", "expected an integer >= 1, got int -1")
    renamed = error.renamed("--num-envs")
    assert str(renamed) == "--num-envs: expected an integer >= 1, got int -1"
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ArgumentError and str(back) == str(error)
