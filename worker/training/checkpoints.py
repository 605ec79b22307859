"""When LoRA files are saved and removed during a run, and the resume state written beside them.

Saving follows sd-scripts' train_network.py: a step file `{name}-step{step:08d}` every save_every_n_steps
(checked after each optimizer step, before the epoch's own save), an epoch file `{name}-{epoch:06d}` at the
saved epochs, the last epoch as `{name}` (never removed). save_last_n_epochs / save_last_n_steps delete
older files as train_util.get_remove_epoch_no / get_remove_step_no compute them: after saving epoch e, epoch
files up to e - save_every_n_epochs * N; after saving step s, step files up to (s - N - 1) rounded down to a
multiple of save_every_n_steps.

Resume state (one file, replaced at each save when the engine is given a state folder): the trainable LoRA
weights by name, optimizer, lr scheduler and grad-scaler states, the RNG states (torch CPU/CUDA, Python
`random`, NumPy, the run's noise generator), the step, where the next step starts (epoch and batch index in
that epoch's fixed, seed-derived batch order), the kept files and a copy of the config. Loading it continues
the run bit for bit: the same files, the same step numbers.

The last epoch writes one too (after its samples): a finished run's final state, which a run of the same
config with more epochs continues from (POST /v1/jobs/{id}/continue; check_continuation). Its lr scheduler
is built for the new total and set to the state's step, so the rest of the run follows the schedule a run of
the new length would have from that step on (see docs/API.md, "Continue a job").
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config.plan import TrainingPlan
from shared.config.spec import TrainingConfig
from shared.errors import LorabakeError
from worker.training import export

STATE_FORMAT = 1
STATE_FILE_NAME = "resume-state.pt"


class ResumeStateError(LorabakeError):
    """The resume state cannot continue this run (another config or dataset, or an unreadable file)."""

    status_code = 409
    code = "resume_state_mismatch"


def step_file_name(output_name: str, step: int) -> str:
    """sd-scripts' STEP_FILE_NAME: `{output_name}-step{step:08d}`."""
    return f"{output_name}-step{step:08d}.safetensors"


def removed_epoch(config: TrainingConfig, epoch: int) -> int | None:
    """train_util.get_remove_epoch_no: the newest epoch file to delete after saving `epoch`."""
    if config.save_last_n_epochs is None or config.save_every_n_epochs is None:
        return None
    remove = epoch - config.save_every_n_epochs * config.save_last_n_epochs
    return remove if remove > 0 else None


def removed_step(config: TrainingConfig, step: int) -> int | None:
    """train_util.get_remove_step_no: the newest step file to delete after saving `step`."""
    if config.save_last_n_steps is None or config.save_every_n_steps is None:
        return None
    remove = step - config.save_last_n_steps - 1
    remove -= remove % config.save_every_n_steps
    return remove if remove > 0 else None


@dataclass(frozen=True)
class Position:
    """Where training (re)starts: `step` steps done; the next one starts at epoch `epoch`'s batch `batch`."""

    step: int = 0
    epoch: int = 1
    batch: int = 0


# --- the state file -----------------------------------------------------------------------------------------


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}  # fmt: skip


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


@dataclass
class TrainState:
    """The live objects a resume state is taken from and restored into."""

    models: dict[str, torch.nn.Module | None]  # "unet", "text_encoder", ...: their trainable parameters
    optimizer: Any  # torch optimizer (accelerate-wrapped or not)
    lr_scheduler: Any
    noise_generator: torch.Generator
    scaler: Any = None  # accelerate's GradScaler (fp16) or None

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {
            f"{prefix}.{name}": p
            for prefix, model in self.models.items()
            if model is not None
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    def capture(self) -> dict[str, Any]:
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "noise": self.noise_generator.get_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "weights": {k: p.detach().to("cpu", copy=True) for k, p in self.named_parameters().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
        }

    def restore(self, state: dict[str, Any]) -> None:
        params = self.named_parameters()
        weights = state["weights"]
        if set(weights) != set(params):
            missing = sorted(set(params) - set(weights))[:3]
            extra = sorted(set(weights) - set(params))[:3]
            raise ResumeStateError(
                f"the resume state's LoRA weights do not fit this network (missing {missing}, extra {extra})"
            )
        with torch.no_grad():
            for name, p in params.items():
                if weights[name].shape != p.shape:
                    raise ResumeStateError(f"resume state: {name} has shape {tuple(weights[name].shape)}")
                p.copy_(weights[name].to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        _set_numpy_state(rng["numpy"])
        self.noise_generator.set_state(rng["noise"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def follow_schedule(self) -> None:
        """After restoring a state into a scheduler built for another total (a continued run): each group's
        lr as this schedule has it at the restored step, as a run of this length would have set it there.
        LambdaLR (every schedule here) computes get_lr() from last_epoch alone, as its step() does."""
        scheduler = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)  # accelerate wraps it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "use get_last_lr()": we do want the closed form at this step
            lrs = scheduler.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)


def _config_fingerprint(config: TrainingConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def _config_diff(
    saved: dict[str, Any], config: TrainingConfig, *, allowed: tuple[str, ...] = ()
) -> list[str]:
    """Fields whose values differ; a field a state predates (written by an older worker) counts as its
    default, which is what that run trained with."""
    current = _config_fingerprint(config)
    fields = TrainingConfig.model_fields
    defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    return sorted(k for k in set(saved) | set(current) if k not in allowed and saved.get(k) != current.get(k))


def write_state(path: Path, payload: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    export.write_atomically(path, buffer.getvalue())
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The state written by write_state (loaded with weights_only: no code runs from the file)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ResumeStateError(f"cannot read the resume state {Path(path).name}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeStateError("the resume state has an unknown format")
    return state


def check_state(state: dict[str, Any], config: TrainingConfig, plan: TrainingPlan) -> None:
    """The state must come from this very run: same config (seed aside when it was chosen), same plan."""
    diff = _config_diff(dict(state["config"]), config)
    if diff:
        raise ResumeStateError(f"the resume state was written for another config (differs in {diff})")
    if (state["total_steps"], state["steps_per_epoch"]) != (plan.total_steps, plan.steps_per_epoch):
        raise ResumeStateError(
            f"the resume state was written for another dataset ({state['total_steps']} total steps, "
            f"this run has {plan.total_steps})"
        )


def check_continuation(state: dict[str, Any], config: TrainingConfig, plan: TrainingPlan) -> None:
    """The final state of a finished run of this config with fewer epochs (only `epochs` may differ) and the
    same dataset: this run trains on from its end."""
    saved = dict(state["config"])
    diff = _config_diff(saved, config, allowed=("epochs",))
    if diff:
        raise ResumeStateError(f"the state to continue was written for another config (differs in {diff})")
    if state["steps_per_epoch"] != plan.steps_per_epoch:
        raise ResumeStateError(
            f"the state to continue was written for another dataset ({state['steps_per_epoch']} steps per "
            f"epoch, this run has {plan.steps_per_epoch})"
        )
    done = int(state["completed_epochs"])
    end = {"step": done * plan.steps_per_epoch, "epoch": done + 1, "batch": 0}
    if done != saved.get("epochs") or state["position"] != end:
        raise ResumeStateError("the state to continue is not the end of a finished run")
    if done >= plan.epochs:
        raise ResumeStateError(f"the run to continue trained {done} epochs already; this has {plan.epochs}")


# --- saving and removing during the run ---------------------------------------------------------------------


# A callable that writes one LoRA file: (file name, epoch, step, is_final) -> the SavedLora it wrote.
SaveFile = Callable[[str, int, int, bool], Any]


@dataclass
class Checkpointer:
    """Saves, removes and records files and resume states at the points the config asks for."""

    config: TrainingConfig
    plan: TrainingPlan
    seed: int
    out_dir: Path
    hooks: Any  # engine.EngineHooks
    save_file: SaveFile
    train_state: TrainState
    state_dir: Path | None = None
    files: list = field(default_factory=list)  # SavedLora written by this call and still kept
    kept: list[dict[str, Any]] = field(default_factory=list)  # every kept file, earlier attempts included
    position: Position = field(default_factory=Position)
    loss: float | None = None
    final_state: dict[str, Any] | None = None  # taken at the last epoch's save, written by finish()

    def resume(self, state: dict[str, Any], *, continuing: bool = False) -> Position:
        """Restore `state`: of this same run (a resumed attempt), or with `continuing` a finished run's final
        state (check_continuation), whose files are not this run's to keep or remove."""
        if continuing:
            check_continuation(state, self.config, self.plan)
        else:
            check_state(state, self.config, self.plan)
        self.train_state.restore(state)
        if continuing:
            self.train_state.follow_schedule()
        self.kept = [] if continuing else [dict(f) for f in state["files"]]
        self.loss = state.get("loss")
        self.position = Position(**state["position"])
        return self.position

    # -- hooks into the loop --
    def after_step(self, *, step: int, epoch: int, next_batch: int, loss: float | None) -> None:
        every = self.config.save_every_n_steps
        if not every or step % every:
            return
        self.hooks.on_stage("saving")
        # Kohya's ss_epoch for a step file: the epochs completed before this step's epoch.
        self._save(step_file_name(self.config.output_name, step), epoch - 1, step, False, kind="step")
        remove = removed_step(self.config, step)
        if remove is not None:
            self._remove(lambda f: f["kind"] == "step" and f["step"] <= remove)
        self._write_state(Position(step, epoch, next_batch), completed_epochs=epoch - 1, loss=loss)
        self.hooks.on_stage("training")

    def after_epoch(self, *, step: int, epoch: int, loss: float | None) -> None:
        if epoch not in self.plan.saved_epochs:
            return
        self.hooks.on_stage("saving")
        is_final = epoch == self.plan.epochs
        name = export.lora_file_name(self.config.output_name, epoch, is_final=is_final)
        self._save(name, epoch, step, is_final, kind="final" if is_final else "epoch")
        if is_final:
            if self.state_dir is not None:  # taken now, as a longer run's state of this epoch would be
                end = Position(step, epoch + 1, 0)
                self.final_state = self._state_payload(end, completed_epochs=epoch, loss=loss)
            return
        remove = removed_epoch(self.config, epoch)
        if remove is not None:
            self._remove(lambda f: f["kind"] == "epoch" and f["epoch"] <= remove)
        self._write_state(Position(step, epoch + 1, 0), completed_epochs=epoch, loss=loss)
        self.hooks.on_stage("training")

    # -- internals --
    def _save(self, name: str, epoch: int, step: int, is_final: bool, *, kind: str) -> None:
        saved = self.save_file(name, epoch, step, is_final)
        self.kept = [f for f in self.kept if f["name"] != name]
        self.kept.append({"name": name, "epoch": epoch, "step": step, "is_final": is_final, "kind": kind})
        self.files[:] = [f for f in self.files if f.path.name != name] + [saved]
        self.hooks.on_saved(saved)

    def _remove(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        from worker.training.engine import SavedLora  # the engine imports this module

        for entry in [f for f in self.kept if predicate(f)]:
            path = self.out_dir / entry["name"]
            path.unlink(missing_ok=True)  # absent when an earlier attempt (another worker) saved it
            self.kept.remove(entry)
            self.files[:] = [f for f in self.files if f.path.name != entry["name"]]
            self.hooks.on_removed(
                SavedLora(path=path, epoch=entry["epoch"], step=entry["step"], is_final=entry["is_final"])
            )

    def finish(self) -> None:
        """After the last epoch's samples: the final state, which a longer run continues from. Written last,
        so a worker that dies before it redoes the last epoch (its samples included) on the next attempt."""
        if self.final_state is not None and self.state_dir is not None:
            self._announce(self.final_state)
        self.final_state = None

    def _write_state(self, position: Position, *, completed_epochs: int, loss: float | None) -> None:
        if self.state_dir is not None:
            self._announce(self._state_payload(position, completed_epochs=completed_epochs, loss=loss))

    def _announce(self, payload: dict[str, Any]) -> None:
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = write_state(self.state_dir / STATE_FILE_NAME, payload)
        self.hooks.on_state_saved(path, payload["completed_epochs"], payload["position"]["step"])

    def _state_payload(
        self, position: Position, *, completed_epochs: int, loss: float | None
    ) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": _config_fingerprint(self.config),
            "seed": self.seed,
            "total_steps": self.plan.total_steps,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "position": {"step": position.step, "epoch": position.epoch, "batch": position.batch},
            "completed_epochs": completed_epochs,
            "files": [dict(f) for f in self.kept],
            "loss": loss,
            **self.train_state.capture(),
        }
