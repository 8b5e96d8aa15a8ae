import pytest
import torch

from edgenode.errors import UsageError
from edgenode.model import MODEL_REGISTRY, CosineClassifier, ModelConfig, build_model, count_parameters, preset_config, unit_rows
from edgenode.ode.solvers import SolverConfig


@pytest.mark.parametrize("arch", list(MODEL_REGISTRY))
def test_logits_shape_and_state_shape(arch):
    model = build_model(preset_config(arch, num_classes=7, width=16)).eval()
    x = torch.randn(3, 3, 64, 64)
    assert model.stem(x).shape == (3, 16, 16, 16)
    assert model(x).shape == (3, 7)


@pytest.mark.parametrize("arch", ["odenet", "faceode", "faceode-res"])
@pytest.mark.parametrize("width", [24, 40, 160])
def test_group_norm_presets_build_at_widths_that_are_not_multiples_of_32(arch, width):
    model = build_model(preset_config(arch, num_classes=3, width=width)).eval()
    groups = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert max(groups) <= 32
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_faceode_res_is_faceode_plus_residual_blocks_at_64_32_and_16_px():
    """Same stem, ODE block and head as faceode (the same weights in the same order, the blocks' aside), with one
    residual block at each of 64×64, 32×32 and 16×16, the last one after the ODE block."""
    from edgenode.model import ResidualBlock

    plain = build_model(preset_config("faceode", num_classes=7, width=32)).eval()
    res = build_model(preset_config("faceode-res", num_classes=7, width=32)).eval()
    assert not any(isinstance(m, ResidualBlock) for m in plain.modules())
    sizes = []
    for block in (m for m in res.modules() if isinstance(m, ResidualBlock)):
        block.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(output.shape[1:])))
    res(torch.randn(2, 3, 64, 64))
    assert sizes == [(8, 64, 64), (16, 32, 32), (32, 16, 16)]
    assert isinstance(res.head[0], ResidualBlock), "the 16×16 block works on the ODE block's output, not the stem's"
    plain_shapes = sorted(tuple(p.shape) for p in plain.parameters())
    block_shapes = [tuple(p.shape) for m in res.modules() if isinstance(m, ResidualBlock) for p in m.parameters()]
    assert sorted(plain_shapes + block_shapes) == sorted(tuple(p.shape) for p in res.parameters())
    # with each block's last conv zeroed a block is the identity, and faceode's weights (in the same order once the
    # blocks' are left out) make faceode-res compute exactly what faceode does
    blocks = [name + "." for name, m in res.named_modules() if isinstance(m, ResidualBlock)]
    for block in (m for m in res.modules() if isinstance(m, ResidualBlock)):
        torch.nn.init.zeros_(block.body[-1].weight)
        torch.nn.init.zeros_(block.body[-1].bias)
    state = res.state_dict()
    shared = [k for k in state if not any(k.startswith(prefix) for prefix in blocks)]
    assert len(shared) == len(plain.state_dict())
    state.update({k: v for k, v in zip(shared, plain.state_dict().values())})
    res.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(res(x), plain(x))


def test_paper_preset_matches_the_paper():
    config = preset_config("paper", num_classes=105)
    model = build_model(config)
    assert config.width == 32 and config.solver == SolverConfig(method="euler", n_steps=20)
    assert model.stem(torch.randn(1, 3, 64, 64)).shape == (1, 32, 16, 16)
    assert [m.out_channels for m in model.stem if isinstance(m, torch.nn.Conv2d)] == [8, 16, 32]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.ode.func.modules())
    assert 27_000 < count_parameters(model) < 30_000
    model.eval()(torch.randn(2, 3, 64, 64))
    assert model.nfe == 20


def test_default_preset_uses_groupnorm_time_channel_and_dopri5():
    model = build_model(preset_config("odenet", num_classes=105))
    assert model.config.solver.method == "dopri5"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.ode.func.conv1.conv.in_channels == 64 + 1  # time is an input channel


def test_dopri5_agrees_with_fine_fixed_step_solver():
    torch.manual_seed(0)
    model = build_model(preset_config("odenet", num_classes=5, width=8)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        adaptive = model.with_solver(SolverConfig("dopri5", rtol=1e-7, atol=1e-7))(x)
        fixed = model.with_solver(SolverConfig("rk4", n_steps=32))(x)
    torch.testing.assert_close(adaptive, fixed, rtol=1e-4, atol=1e-5)


def test_nfe_counts_adaptive_evaluations():
    model = build_model(preset_config("odenet", num_classes=5, width=8)).eval()
    calls = []
    model.ode.func.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for _ in range(2):  # the count is of the last pass, not a running total
            calls.clear()
            model(torch.randn(2, 3, 32, 32))
            assert model.nfe == len(calls) >= 6  # dopri5: at least one step of 6 stages


def test_with_solver_does_not_touch_the_original():
    model = build_model(preset_config("odenet", num_classes=5, width=8))
    clone = model.with_solver(SolverConfig("rk4", n_steps=3))
    assert model.config.solver.method == "dopri5" and clone.config.solver.n_steps == 3
    assert clone.ode.func.conv1.conv.weight.data_ptr() != model.ode.func.conv1.conv.weight.data_ptr()


def test_config_round_trip_and_validation():
    config = preset_config("paper", num_classes=9, width=16)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UsageError):
        preset_config("resnet", num_classes=9)
    with pytest.raises(UsageError):
        ModelConfig(num_classes=1)


def test_cosface_margin_lowers_only_the_true_class_by_scale_times_margin():
    """CosFace: s·(cos − m) for the true class. Its gradient reaches the learned scale through the margin too."""
    torch.manual_seed(0)
    head = CosineClassifier(8, 5, scale=16.0)
    features, labels = torch.randn(4, 8), torch.tensor([0, 3, 3, 1])
    logits = head(features)
    margined = head.with_margin(logits, labels, 0.25)
    expected = logits.detach().clone()
    expected[torch.arange(4), labels] -= 16.0 * 0.25
    torch.testing.assert_close(margined.detach(), expected)
    assert head.with_margin(logits, labels, 0.0) is logits

    # the same loss written in cosine space, as the CosFace paper writes it
    cos = unit_rows(features) @ unit_rows(head.weight).t()
    by_hand = torch.nn.functional.cross_entropy(head.log_scale.exp() * (cos - 0.25 * torch.nn.functional.one_hot(labels, 5)), labels)
    ours = torch.nn.functional.cross_entropy(margined, labels)
    grad_ours = torch.autograd.grad(ours, head.log_scale, retain_graph=True)[0]
    grad_by_hand = torch.autograd.grad(by_hand, head.log_scale)[0]
    torch.testing.assert_close(ours, by_hand)
    torch.testing.assert_close(grad_ours, grad_by_hand)


def test_cosface_margin_at_a_fixed_scale_leaves_the_learned_scale_alone():
    """CosFace proper: s·(cos − m·[true class]) at a fixed s. The weights learn from it as from the formula written
    by hand, and the head's learned scale (the plain logits' temperature) gets no gradient from it."""
    torch.manual_seed(0)
    head = CosineClassifier(8, 5, scale=16.0)
    features, labels = torch.randn(4, 8), torch.tensor([0, 3, 3, 1])
    margined = head.fixed_scale_margin(features, labels, 0.25, 30.0)
    cos = unit_rows(features) @ unit_rows(head.weight).t()
    by_hand = 30.0 * (cos - 0.25 * torch.nn.functional.one_hot(labels, 5))
    torch.testing.assert_close(margined, by_hand)
    loss, loss_by_hand = (torch.nn.functional.cross_entropy(x, labels) for x in (margined, by_hand))
    grad_weight, grad_scale = torch.autograd.grad(loss, [head.weight, head.log_scale], allow_unused=True)
    torch.testing.assert_close(grad_weight, torch.autograd.grad(loss_by_hand, head.weight)[0])
    assert grad_scale is None  # not even rounding residue, which Adam's normalised step would make a full step
    # the learned scale's own margin (scale 0) does move it
    learned = torch.nn.functional.cross_entropy(head.with_margin(head(features), labels, 0.25), labels)
    assert abs(float(torch.autograd.grad(learned, head.log_scale)[0])) > 1e-3


def test_cosine_head_starts_at_scale_16():
    head = build_model(preset_config("faceode", num_classes=5, width=8)).head[-1]
    assert isinstance(head, CosineClassifier) and float(head.log_scale.detach().exp()) == pytest.approx(16.0)


def test_group_norm_has_one_group_per_channel_up_to_32():
    model = build_model(preset_config("odenet", num_classes=3, width=16))
    assert {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)} == {16}
    model = build_model(preset_config("odenet", num_classes=3, width=40))
    assert {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)} == {20}


def test_odenet_function_sees_time():
    torch.manual_seed(0)
    func = build_model(preset_config("odenet", num_classes=3, width=8)).ode.func
    h = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        assert not torch.allclose(func(torch.tensor(0.0), h), func(torch.tensor(1.0), h))


def test_an_adaptive_solve_passes_its_tolerances_and_the_adjoint_choice_to_torchdiffeq(monkeypatch):
    """Every preset uses rtol == atol, so a swapped or dropped tolerance would go unnoticed by accuracy alone."""
    import torchdiffeq

    calls = []

    def recording(name):
        real = getattr(torchdiffeq, name)

        def odeint(func, y0, t, **kwargs):
            calls.append((name, kwargs["rtol"], kwargs["atol"]))
            return real(func, y0, t, **kwargs)

        return odeint

    for name in ("odeint", "odeint_adjoint"):
        monkeypatch.setattr(torchdiffeq, name, recording(name))
    model = build_model(preset_config("odenet", num_classes=3, width=4)).eval()
    x = torch.randn(1, 3, 16, 16)
    model.with_solver(SolverConfig("dopri5", rtol=1e-4, atol=1e-6))(x)
    model.with_solver(SolverConfig("dopri5", rtol=1e-3, atol=1e-5, adjoint=True))(x)
    assert calls == [("odeint", 1e-4, 1e-6), ("odeint_adjoint", 1e-3, 1e-5)]


@pytest.mark.parametrize("dropout", [1.0, -0.1, float("nan")])
def test_a_dropout_that_drops_everything_or_is_no_fraction_is_refused(dropout):
    """Dropout 1 zeroes every feature in training: the head would learn nothing, without a word."""
    with pytest.raises(UsageError, match=r"dropout must be in \[0, 1\)"):
        ModelConfig(dropout=dropout)
    assert ModelConfig(dropout=0.99).dropout == 0.99


@pytest.mark.parametrize("arch", ["paper", "odenet", "faceode", "faceode-res"])
def test_every_preset_puts_its_dropout_before_the_last_layers(arch):
    """--dropout is recorded in the checkpoint: each preset's head must hold the layer, active in training only."""
    torch.manual_seed(0)
    model = build_model(preset_config(arch, num_classes=3, width=16, dropout=0.5))
    layers = [m for m in model.head if isinstance(m, torch.nn.Dropout)]
    assert len(layers) == 1 and layers[0].p == 0.5
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # evaluation is deterministic
    model.train()
    features = [model(x, return_features=True)[0] for _ in range(2)]
    assert not torch.equal(features[0], features[1])
    plain = build_model(preset_config(arch, num_classes=3, width=16))
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())


@pytest.mark.parametrize("channels, groups", [(8, 8), (32, 32), (40, 20), (64, 32), (96, 32), (128, 32), (160, 32), (256, 32)])
def test_group_norm_takes_32_groups_wherever_the_channels_divide_into_them(channels, groups):
    """The presets' default widths (odenet 64, faceode 128) normalise over 32 groups, as trained checkpoints expect:
    the state dict does not record the grouping, so another count would load and compute other features."""
    from edgenode.model import group_norm

    norm = group_norm(channels)
    assert (norm.num_groups, norm.num_channels) == (groups, channels)


@pytest.mark.parametrize("arch", ["paper", "odenet", "faceode", "faceode-res"])
@pytest.mark.parametrize("dropouts", [(0.0, 0.3), (0.3, 0.0), (0.2, 0.4)])
def test_weights_move_between_a_preset_with_and_without_dropout(arch, dropouts):
    """A dropout layer shifts the head's later layer names (head.8 becomes head.9) and holds no weights:
    ``rename_weights`` gives the same tensors under the other network's names, and both compute the same in eval."""
    from edgenode.model import rename_weights

    source, target = (preset_config(arch, num_classes=3, width=16, dropout=d) for d in dropouts)
    torch.manual_seed(0)
    trained = build_model(source).eval()
    moved = build_model(target)  # drawn after the source: other weights until loaded
    moved.load_state_dict(rename_weights(trained.state_dict(), source, target))
    moved.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(moved(x), trained(x), rtol=0, atol=0)
    assert rename_weights(trained.state_dict(), source, source).keys() == trained.state_dict().keys()


def test_rename_weights_leaves_another_network_for_load_state_dict_to_refuse():
    """Only dropout may differ: weights of another width keep their names, and loading them fails as before."""
    from edgenode.model import rename_weights

    narrow = preset_config("odenet", num_classes=3, width=8)
    wide = preset_config("odenet", num_classes=3, width=16, dropout=0.3)
    state = build_model(narrow).state_dict()
    assert rename_weights(state, narrow, wide) is state
    with pytest.raises(RuntimeError, match="size mismatch|Missing key"):
        build_model(wide).load_state_dict(rename_weights(state, narrow, wide))


def test_rename_weights_leaves_the_callers_random_numbers_alone():
    """``train --init`` calls it between seeding and training: it must draw nothing from torch's generator."""
    from edgenode.model import rename_weights

    source, target = (preset_config("faceode", num_classes=3, width=16, dropout=d) for d in (0.0, 0.3))
    state = build_model(source).state_dict()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    rename_weights(state, source, target)
    assert torch.equal(torch.random.get_rng_state(), before)
