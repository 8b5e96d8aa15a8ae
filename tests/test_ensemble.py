"""Weight averaging: only checkpoints that share architecture, classes, input and split average; their solver and
dropout may differ (``train --init`` allows it) and the first member's are kept, integer buffers included."""

import dataclasses

import pytest
import torch

from edgenode.checkpoint import Checkpoint, InputSpec
from edgenode.ensemble import average_weights
from edgenode.errors import ArtifactError
from edgenode.model import build_model, preset_config
from edgenode.ode.solvers import SolverConfig

SPEC = InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def member(seed: int, **config) -> Checkpoint:
    torch.manual_seed(seed)
    model_config = preset_config("paper", num_classes=3, width=8, **config)
    state = build_model(model_config).state_dict()
    for key, value in state.items():
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked: a count, not a weight
            state[key] = torch.full_like(value, 10 * (seed + 1))
    return Checkpoint(model_config, ["a", "b", "c"], SPEC, "f" * 64, state, epoch=seed + 1, metrics={"best_epoch": 1},
                      history=[{"epoch": 1}], optimizer={"state": {}}, scheduler={})


def test_members_of_another_solver_or_dropout_average_and_keep_the_first_members():
    first = member(0, dropout=0.1)
    other = member(1, solver=SolverConfig("rk4", n_steps=4), dropout=0.2)
    mean = average_weights([first, other])
    assert mean.model_config == first.model_config
    for key, value in first.state_dict.items():
        if value.is_floating_point():
            torch.testing.assert_close(mean.state_dict[key], (value + other.state_dict[key]) / 2, msg=key)
    mean.build_model()


def test_integer_buffers_come_from_the_first_member_not_a_mean_or_the_last():
    members = [member(0), member(1), member(2)]
    counts = {k: v for k, v in average_weights(members).state_dict.items() if not v.is_floating_point()}
    assert counts and all(v.dtype == torch.long for v in counts.values())
    for key, value in counts.items():
        assert torch.equal(value, torch.full_like(value, 10)), key


def test_members_of_another_input_are_refused():
    """Pictures normalised otherwise (or another size, or aligned) make other weights: their mean is no network."""
    first = member(0)
    for spec in (InputSpec(32, (0.4, 0.5, 0.5), (0.25, 0.25, 0.25)), InputSpec(48, SPEC.mean, SPEC.std)):
        with pytest.raises(ArtifactError, match="its input differs"):
            average_weights([first, dataclasses.replace(member(1), input_spec=spec)])
    with pytest.raises(ArtifactError, match="its classes differs"):
        average_weights([first, dataclasses.replace(member(1), classes=["a", "b", "d"])])
    with pytest.raises(ValueError, match="at least one checkpoint"):
        average_weights([])


@pytest.mark.parametrize("dropouts", [(0.0, 0.3), (0.3, 0.0)])
def test_members_with_and_without_dropout_average_weight_by_weight(dropouts):
    """A dropout layer shifts the names of the head's later weights (paper: head.2 becomes head.3); each weight is
    averaged with the other network's weight at the same place in its list (a dropout layer holds none), not
    refused or paired by name with another layer."""
    first, other = member(0, dropout=dropouts[0]), member(1, dropout=dropouts[1])
    assert set(first.state_dict) != set(other.state_dict)
    mean = average_weights([first, other])
    assert list(mean.state_dict) == list(first.state_dict)
    for (key, value), theirs in zip(first.state_dict.items(), other.state_dict.values()):
        if value.is_floating_point():
            torch.testing.assert_close(mean.state_dict[key], (value + theirs) / 2, msg=key)
    mean.build_model()
