"""Continuing a LoRA: a finished run's final state trained on by a run of more epochs writes, from the next
epoch on, the same files bit for bit as a run of the larger total from the start; and `network_weights`
starts a run's network as the given file is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from shared.config.network_weights import NetworkWeightsMismatch
from shared.config.spec import TrainingConfig
from tests.worker.test_resume import Run
from tests.worker.test_training_options import BASE, make_dataset
from worker.training import checkpoints, engine, export, optim
from worker.training.engine import EngineHooks, TrainingCanceled, train_lora

# 3 images, batch 1: 3 steps per epoch. AdamW, the text encoder trained, offset noise, keep-last-2 epochs, a
# step file every 4 steps, warmup in steps (a schedule whose first 9 steps do not depend on the total).
CONFIG = TrainingConfig(
    **{**BASE, "batch_size": 1},
    output_name="c",
    epochs=5,
    network_dim=2,
    network_alpha=1.0,
    unet_lr=5e-3,
    text_encoder_lr=5e-3,
    lr_scheduler="constant_with_warmup",
    lr_warmup_steps=2,
    noise_offset=0.05,
    save_precision="float",
    save_every_n_epochs=1,
    save_last_n_epochs=2,
    save_every_n_steps=4,
)
# What differs between any two launches of one run (a resumed one too): when, and sd-scripts' session id.
PER_LAUNCH = {"ss_session_id", "ss_training_started_at", "ss_training_finished_at", "modelspec.date"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("continue-data"))


@pytest.fixture(scope="module")
def five(models_dir, dataset, tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("five"), "five")
    return run, run.train(CONFIG, dataset, models_dir)


@pytest.fixture(scope="module")
def three(models_dir, dataset, tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("three"), "three")
    return run, run.train(CONFIG.model_copy(update={"epochs": 3}), dataset, models_dir)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


def _same_file(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), a.name
    meta_a, meta_b = _metadata(a), _metadata(b)
    assert {k: v for k, v in meta_a.items() if k not in PER_LAUNCH} == {
        k: v for k, v in meta_b.items() if k not in PER_LAUNCH
    }, a.name


def test_three_epochs_continued_by_two_equal_five(five, three, models_dir, dataset, tmp_path):
    five_run, five_result = five
    three_run, _ = three
    # The finished run announced its final state last, at its end (epoch 3, step 9): what /continue uses.
    final_path, completed = three_run.states[9]
    assert completed == 3 and max(three_run.states) == 9
    final = checkpoints.read_state(final_path)
    assert final["position"] == {"step": 9, "epoch": 4, "batch": 0} and final["config"]["epochs"] == 3

    more = Run(tmp_path, "more")
    result = train_lora(
        CONFIG, dataset, more.out, models_dir=models_dir, hooks=more.hooks(), device="cpu",
        state_dir=tmp_path / "more-state", continue_from=final_path,
    )  # fmt: skip

    # Epochs and steps are numbered on; the files are the 5-epoch run's, bit for bit, and so is the loss.
    assert more.steps == [(s, (s - 1) // 3 + 1) for s in range(10, 16)]
    written = [e[1] for e in more.events if e[0] == "saved"]
    assert written == ["c-step00000012.safetensors", "c-000004.safetensors", "c.safetensors"]
    for name in written:
        _same_file(more.out / name, five_run.out / name)
    assert _metadata(more.out / "c.safetensors")["ss_epoch"] == "5"
    assert not [e for e in more.events if e[0] == "removed"]  # the 3-epoch job's files are not its own
    assert result.seed == five_result.seed and result.final_loss == five_result.final_loss

    # The continued run's own final state continues it again, as any run's would.
    assert max(more.states) == 15 and checkpoints.read_state(more.states[15][0])["config"]["epochs"] == 5


def test_a_continuation_must_be_of_the_same_run(three, models_dir, dataset, tmp_path):
    three_run, _ = three
    final_path = three_run.states[9][0]
    stages: list[str] = []
    other = CONFIG.model_copy(update={"unet_lr": 1e-3})
    with pytest.raises(checkpoints.ResumeStateError, match="unet_lr"):
        train_lora(
            other, dataset, tmp_path, models_dir=models_dir, device="cpu",
            hooks=EngineHooks(on_stage=stages.append), continue_from=final_path,
        )  # fmt: skip
    assert stages == []  # refused before any work
    with pytest.raises(checkpoints.ResumeStateError, match="trained 3 epochs already"):
        train_lora(
            CONFIG.model_copy(update={"epochs": 3}), dataset, tmp_path, models_dir=models_dir, device="cpu",
            continue_from=final_path,
        )  # fmt: skip
    mid_run = three_run.states[6][0]  # epoch 2's state: not a finished run's end
    with pytest.raises(checkpoints.ResumeStateError, match="not the end of a finished run"):
        train_lora(CONFIG, dataset, tmp_path, models_dir=models_dir, device="cpu", continue_from=mid_run)


def test_a_schedule_with_an_end_continues_as_the_longer_run_has_it():
    """Cosine to the total: a 9-step run's state in a 15-step run's scheduler gives the lr the 15-step
    schedule has at step 9, not the 9-step one's (which has reached 0)."""
    config = CONFIG.model_copy(update={"lr_scheduler": "cosine", "lr_warmup_steps": 0})

    def stepped(total: int, steps: int):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([param], lr=1.0)
        sched = optim.build_lr_scheduler(config, opt, total)
        for _ in range(steps):
            opt.step()
            sched.step()
        return opt, sched

    short_opt, short_sched = stepped(9, 9)
    long_opt, _ = stepped(15, 9)
    opt, sched = stepped(15, 0)
    state = checkpoints.TrainState({}, opt, sched, torch.Generator())
    opt.load_state_dict(short_opt.state_dict())
    sched.load_state_dict(short_sched.state_dict())
    assert opt.param_groups[0]["lr"] == short_opt.param_groups[0]["lr"] < 1e-9  # the short one ended
    state.follow_schedule()
    assert opt.param_groups[0]["lr"] == long_opt.param_groups[0]["lr"] > 0.1
    assert sched.get_last_lr() == [long_opt.param_groups[0]["lr"]]


# --- network_weights ----------------------------------------------------------------------------------------


def _loaded_network(monkeypatch, config, dataset, models_dir, tmp_path, network_weights):
    """Runs the engine with network_weights up to the first optimizer step (canceled there) and returns the
    network as it was then, in the file's layout (the engine's own model object, observed)."""
    seen = {}
    real_load = engine.load_family_model

    def observed(*args, **kwargs):
        seen["model"] = real_load(*args, **kwargs)
        return seen["model"]

    monkeypatch.setattr(engine, "load_family_model", observed)
    with pytest.raises(TrainingCanceled) as stopped:
        train_lora(
            config, dataset, tmp_path / "out", models_dir=models_dir, device="cpu",
            network_weights=network_weights, hooks=EngineHooks(should_cancel=lambda: True),
        )  # fmt: skip
    assert stopped.value.step == 0
    pipe = seen["model"].pipeline
    return export.kohya_state_dict(
        pipe.unet, pipe.text_encoder, network_alpha=config.network_alpha, save_dtype=torch.float32
    )


def test_network_weights_start_the_network_as_the_file_is(three, monkeypatch, dataset, models_dir, tmp_path):
    three_run, _ = three
    given = three_run.out / "c.safetensors"  # a trained file: nothing like a fresh init
    config = CONFIG.model_copy(update={"epochs": 1, "seed": 5})
    at_step_0 = _loaded_network(monkeypatch, config, dataset, models_dir, tmp_path, given)
    expected = load_file(given)
    assert at_step_0.keys() == expected.keys()
    assert all(torch.equal(at_step_0[k], expected[k]) for k in expected)
    fresh = _loaded_network(monkeypatch, config, dataset, models_dir, tmp_path, None)
    up = next(k for k in expected if k.endswith("lora_up.weight"))
    assert not torch.equal(fresh[up], expected[up])  # without it the run starts elsewhere (lora_up = 0)


def test_network_weights_of_another_shape_are_refused_naming_what_differs(
    three, dataset, models_dir, tmp_path
):
    given = three[0].out / "c.safetensors"
    cases = {  # the run's config -> the field named
        "network_dim": CONFIG.model_copy(update={"network_dim": 4}),
        "network_target": CONFIG.model_copy(update={"network_target": "attention"}),
        "network_alpha": CONFIG.model_copy(update={"network_alpha": 2.0}),
        "network_type": CONFIG.model_copy(update={"network_type": "loha"}),
    }
    for field, config in cases.items():
        with pytest.raises(NetworkWeightsMismatch) as info:
            train_lora(config, dataset, tmp_path, models_dir=models_dir, device="cpu", network_weights=given)
        fields = [d["field"] for d in info.value.details["fields"]]
        assert f"config.{field}" in fields, (field, info.value.message)
        assert info.value.details["field"] == "config.network_weights"
