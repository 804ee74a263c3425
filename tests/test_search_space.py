"""Per-method search spaces (cvmf_ray/search_space.py): every built-in space samples only values its method
accepts, the common parameters follow the field names and the original's epochs, user overrides replace, remove or
are refused on one line, and the weight decay added for tuning leaves every existing cell key as it was.

Pure Python and a few tiny CPU models: Ray Tune's domains are sampled, Ray is never started."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml

from cvmf_ray.data import Augment
from cvmf_ray.errors import UsageError
from cvmf_ray.methods import METHODS, Method, UnlearnData
from cvmf_ray.search_space import method_space, tune_domains

UNLEARNING = [n for n in METHODS.names() if METHODS.get(n).fn is not None]


def fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHODS.get(name).params)}


SGD_METHODS = [n for n in UNLEARNING if "weight_decay" in fields(n)]


@pytest.mark.parametrize("name", UNLEARNING)
def test_every_method_s_space_samples_only_values_the_method_accepts(name):
    method = METHODS.get(name)
    space = method_space(method, 200)
    assert space and set(space) <= fields(name)
    for dataset in ("digits", "fashionmnist"):
        for param, dist in space.items():
            for value in next(iter(dist.values())):  # [lo, hi] of a range, or every choice
                assert method.resolve_params({param: value}, None, dataset)[param] == value, (dataset, param)
    rng = np.random.default_rng(0)
    domains = tune_domains(space)
    for _ in range(20):
        point = {param: domain.sample(random_state=rng) for param, domain in domains.items()}
        for param, value in point.items():
            ((kind, values),) = space[param].items()
            assert value in values if kind == "choice" else values[0] <= value <= values[1], (param, value)
        for dataset in ("digits", "fashionmnist"):
            method.instantiate(method.resolve_params(point, None, dataset))


def test_common_parameters_come_from_field_names_and_the_original_s_epochs():
    space = method_space(METHODS.get("finetune"), 200)
    assert space == {
        "lr": {"loguniform": [1e-5, 1e-1]},
        "weight_decay": {"loguniform": [1e-5, 1e-1]},
        "batch_size": {"choice": [64, 128, 256]},
        "epochs": {"int": [1, 40]},
    }
    for train_epochs, most in ((200, 40), (30, 6), (3, 1), (1, 1), (6, 2)):
        assert method_space(METHODS.get("gradient_ascent"), train_epochs)["epochs"] == {"int": [1, most]}
    assert "forget_batch_size" in method_space(METHODS.get("scrub"), 200)
    assert "weight_decay" not in method_space(METHODS.get("bad_teacher"), 200)  # Adam, no weight decay
    assert method_space(METHODS.get("fisher"), 200) == {"alpha": {"loguniform": [1e-8, 1e-4]}}
    assert set(method_space(METHODS.get("ssd"), 200)) == {"alpha", "dampening"}  # its batch stays out


def test_overrides_replace_and_remove_parameters_as_yaml_writes_them():
    overrides = yaml.safe_load("""
        lr: {loguniform: [1e-4, 1e-2]}      # PyYAML reads 1e-4 as a string
        msteps: null
        batch_size: {choice: [32, 64]}
        epochs: {int: [2, 3.0]}
        temperature: {uniform: ["0.5", 4]}
    """)
    space = method_space(METHODS.get("scrub"), 200, overrides)
    assert space["lr"] == {"loguniform": [1e-4, 1e-2]} and "msteps" not in space
    assert space["batch_size"] == {"choice": [32, 64]} and space["epochs"] == {"int": [2, 3]}
    assert space["temperature"] == {"uniform": [0.5, 4.0]} and space["alpha"] == {"uniform": [0.0, 1.0]}
    assert [type(v) for v in space["epochs"]["int"] + space["temperature"]["uniform"]] == [int, int, float, float]
    assert method_space(METHODS.get("fisher"), 200, {"alpha": {"choice": ["1e-6", 1e-5]}}) == {
        "alpha": {"choice": [1e-6, 1e-5]}  # choices converted as the field's type converts them
    }


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("finetune", {"lrr": {"uniform": [0.1, 0.2]}}, "tune.spaces: finetune.lrr: no such parameter; known: epochs"),
        ("finetune", {"lr": 0.1}, "finetune.lr: 0.1 is not null or one of {loguniform: [...]}"),
        ("finetune", {"lr": {"normal": [0, 1]}}, "finetune.lr: {'normal': [0, 1]} is not null or one of"),
        ("finetune", {"lr": {"uniform": [0.1, 0.2], "int": [1, 2]}}, "finetune.lr: {'uniform'"),
        ("finetune", {"lr": {"uniform": 0.1}}, "finetune.lr: uniform takes a list, not 0.1"),
        ("finetune", {"lr": {"uniform": [0.1]}}, "finetune.lr: uniform takes [low, high], not [0.1]"),
        ("finetune", {"lr": {"uniform": ["fast", 1]}}, "finetune.lr: bound 'fast' of uniform is not a number"),
        ("finetune", {"lr": {"uniform": [0.1, "inf"]}}, "finetune.lr: bound inf of uniform is not a finite number"),
        ("finetune", {"lr": {"uniform": [True, 1]}}, "finetune.lr: bound True of uniform is not a finite number"),
        ("finetune", {"lr": {"uniform": [0.2, 0.1]}}, "finetune.lr: uniform needs low < high, not [0.2, 0.1]"),
        ("finetune", {"lr": {"uniform": [0.1, 0.1]}}, "finetune.lr: uniform needs low < high"),
        ("finetune", {"epochs": {"int": [3, 2]}}, "finetune.epochs: int needs low <= high, not [3, 2]"),
        ("finetune", {"lr": {"loguniform": [0, 0.1]}}, "finetune.lr: loguniform needs a low bound > 0, not [0, 0.1]"),
        ("finetune", {"epochs": {"int": [1, 2.5]}}, "finetune.epochs: bound 2.5 of int is not an integer"),
        ("finetune", {"batch_size": {"choice": []}}, "finetune.batch_size: choice needs at least one value"),
        ("finetune", {"batch_size": {"choice": [64, 64.0]}}, "finetune.batch_size: choice repeats 64 in [64, 64.0]"),
        ("finetune", {"lr": {"uniform": [-1, 0.1]}}, "tune.spaces: bad value -1.0 for finetune.lr: Input should be"),
        ("finetune", {"batch_size": {"choice": [0, 64]}}, "tune.spaces: bad value 0 for finetune.batch_size"),
        ("salun", {"mask_ratio": {"uniform": [0.5, 1.5]}}, "bad value 1.5 for salun.mask_ratio"),
        ("finetune", {"epochs": {"uniform": [1, 5]}}, "finetune.epochs: takes integers, which uniform [1, 5] does"),
        ("fisher", {"alpha": None}, "tune.spaces: nothing left to search for method 'fisher'"),
        ("original", {}, "tune.spaces: method 'original' has no hyperparameters to tune"),
        ("retrain", {}, "tune.spaces: method 'retrain' has no hyperparameters to tune"),
    ],
)
def test_bad_spaces_are_refused_on_one_line(name, overrides, message):
    with pytest.raises(UsageError) as err:
        method_space(METHODS.get(name), 200, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_plugin_without_parameters_has_nothing_to_tune():
    with pytest.raises(UsageError, match="cvmf.config: method 'mine:fn' has no hyperparameters to tune"):
        method_space(Method("mine:fn", lambda model, data, params: model), 200, where="cvmf.config")


def test_weight_decay_keeps_every_existing_cell_key_until_it_is_set():
    ga = METHODS.get("gradient_ascent")
    # the resolved dict before weight decay existed: the cell keys hash exactly this
    assert ga.resolve_params({}, None, "fashionmnist") == {"epochs": 5, "lr": 1e-3, "batch_size": 256, "clip": 100.0}
    assert ga.resolve_params({}, None, "digits") == {"epochs": 5, "lr": 1e-3, "batch_size": 64, "clip": 100.0}
    assert ga.resolve_params({"weight_decay": 5e-4}, None, "digits") == ga.resolve_params({}, None, "digits")
    assert ga.instantiate(ga.resolve_params({}, None, "digits")).weight_decay == 5e-4
    assert ga.resolve_params({"weight_decay": 1e-3}, None, "digits")["weight_decay"] == 1e-3
    assert ga.resolve_params({"weight_decay": 0}, None, "digits")["weight_decay"] == 0
    for name in UNLEARNING:  # boundary and CF-k/EU-k default to 0, the rest to 5e-4: neither shows
        assert "weight_decay" not in METHODS.get(name).resolve_params({}, None, "fashionmnist"), name
    with pytest.raises(UsageError, match="bad value -0.1 for gradient_ascent.weight_decay"):
        ga.resolve_params({"weight_decay": -0.1}, None, "digits")


@pytest.mark.parametrize("name", SGD_METHODS)
def test_a_tuned_weight_decay_reaches_the_optimizer(name, monkeypatch):
    decays = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, params, **options):
            decays.append(options["weight_decay"])
            super().__init__(params, **options)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    method = METHODS.get(name)
    hparams = method.resolve_params({"weight_decay": 3e-3, "epochs": 1, "batch_size": 8}, None, "digits")
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    y = torch.arange(40) % 4
    data = UnlearnData(
        x[y == 0], y[y == 0], x[y != 0], y[y != 0], 4, (0.3,), (0.4,), Augment(), "cpu", 0, last_block=("1",)
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    method.fn(model, data, method.instantiate(hparams))
    assert decays == [3e-3]
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())
