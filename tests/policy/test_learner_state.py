"""policy.learner_state checkpoints of a model with parameters that get no gradient (the CTC head in GRPO),
in one process on a plain module: resuming gives the run that was never stopped, also from a checkpoint
written before such parameters got a never-stepped AdamW state; a missing weight fails with its name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from policy.config import LearnerConfig
from policy.learner_state import load_learner_state, lr_multiplier, make_scheduler, save_learner_state

STEPS, SAVE_AT = 4, 2


class Net(nn.Module):
    """``body`` and ``head`` always train; ``spare`` is in the loss only from step ``spare_from`` on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head, self.spare = nn.Linear(6, 6), nn.Linear(6, 3), nn.Linear(6, 2)

    def loss(self, step: int, spare_from: int | None) -> torch.Tensor:
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
        h = torch.tanh(self.body(x))
        loss = self.head(h).pow(2).mean()
        return loss + self.spare(h).pow(2).mean() if spare_from is not None and step >= spare_from else loss


def _fresh(freeze_spare: bool = False):
    net = Net()
    net.spare.requires_grad_(not freeze_spare)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    return net, opt, make_scheduler(opt, LearnerConfig(lr=0.05, lr_schedule="linear", warmup_steps=1), STEPS)


def _steps(net, opt, sched, steps, spare_from) -> None:
    for step in steps:
        net.loss(step, spare_from).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def _snapshot(net, opt) -> tuple[dict, dict]:
    names = {id(p): n for n, p in net.named_parameters()}
    state = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items() if s}
    return {n: p.detach().clone() for n, p in net.named_parameters()}, state


def _equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(_equal(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a)


def _uninterrupted(folder: Path, spare_from, legacy: Path | None = None) -> tuple[dict, dict]:
    """STEPS steps, saving a checkpoint after SAVE_AT (and, with ``legacy``, one the way it was written before
    parameters without a gradient got a never-stepped state: get_state_dict + dcp.save, nothing filled)."""
    net, opt, sched = _fresh()
    _steps(net, opt, sched, range(1, SAVE_AT + 1), spare_from)
    if legacy is not None:
        model_sd, optim_sd = get_state_dict(net, opt, options=StateDictOptions(ignore_frozen_params=True))
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(legacy / "dcp"))
    save_learner_state(folder, net, opt, sched, rank=0, info={"updates": SAVE_AT})
    if legacy is not None:
        for name in ("learner.json", "rng_rank0.json", "rng_rank0.safetensors"):
            shutil.copy(folder / name, legacy / name)
    _steps(net, opt, sched, range(SAVE_AT + 1, STEPS + 1), spare_from)
    return _snapshot(net, opt)


def _resumed(folder: Path, spare_from) -> tuple[dict, dict]:
    net, opt, sched = _fresh()
    assert load_learner_state(folder, net, opt, sched, rank=0)["updates"] == SAVE_AT
    _steps(net, opt, sched, range(SAVE_AT + 1, STEPS + 1), spare_from)
    return _snapshot(net, opt)


@pytest.mark.parametrize("spare_from", [None, SAVE_AT + 1], ids=["never", "after_resume"])
def test_resume_reproduces_the_uninterrupted_run_when_a_parameter_has_no_gradient(tmp_path, spare_from):
    weights, state = _uninterrupted(tmp_path / "ck", spare_from)
    got_weights, got_state = _resumed(tmp_path / "ck", spare_from)
    assert _equal(got_weights, weights) and _equal(got_state, state)
    if spare_from is None:  # never stepped: zero moments at step 0, and the weights never moved
        assert float(state["spare.weight"]["step"]) == 0 and not state["spare.weight"]["exp_avg_sq"].any()
        assert torch.equal(weights["spare.weight"], Net().spare.weight)


@pytest.mark.parametrize("spare_from", [None, SAVE_AT + 1], ids=["never", "after_resume"])
def test_never_stepped_state_written_by_a_save_changes_nothing_in_the_run(tmp_path, spare_from):
    weights, state = _uninterrupted(tmp_path / "ck", spare_from)
    net, opt, sched = _fresh()
    _steps(net, opt, sched, range(1, STEPS + 1), spare_from)
    plain_weights, plain_state = _snapshot(net, opt)
    assert _equal(plain_weights, weights)
    assert _equal(plain_state, {k: v for k, v in state.items() if spare_from is not None or "spare" not in k})


@pytest.mark.parametrize("spare_from", [None, SAVE_AT + 1], ids=["never", "after_resume"])
def test_checkpoint_without_state_for_gradless_parameters_resumes_them_without_state(tmp_path, spare_from):
    (tmp_path / "legacy").mkdir()
    weights, state = _uninterrupted(tmp_path / "ck", spare_from, legacy=tmp_path / "legacy")
    saved = dcp.FileSystemReader(str(tmp_path / "legacy" / "dcp")).read_metadata().state_dict_metadata
    assert "model.spare.weight" in saved and not any(k.startswith("optim.state.spare.") for k in saved)
    got_weights, got_state = _resumed(tmp_path / "legacy", spare_from)
    assert _equal(got_weights, weights)
    if spare_from is None:  # no state, as in the run that wrote the checkpoint
        assert not any(k.startswith("spare.") for k in got_state)
        state = {k: v for k, v in state.items() if not k.startswith("spare.")}
    assert _equal(got_state, state)


def test_checkpoint_missing_a_trainable_weight_fails_naming_it(tmp_path):
    net, opt, sched = _fresh(freeze_spare=True)
    _steps(net, opt, sched, [1], None)
    save_learner_state(tmp_path / "ck", net, opt, sched, rank=0, info={"updates": 1})
    net, opt, sched = _fresh()
    with pytest.raises(
        RuntimeError,
        match=r"no weights for 2 trainable parameter\(s\) of this model, "
        r"e\.g\. spare\.weight, spare\.bias",
    ):
        load_learner_state(tmp_path / "ck", net, opt, sched, rank=0)


def test_a_run_resumed_with_more_steps_or_another_lr_follows_the_new_schedule_from_the_saved_update(tmp_path):
    net, opt, sched = _fresh()  # linear over STEPS = 4 updates, lr 0.05: the LR after all 4 is 0
    _steps(net, opt, sched, range(1, STEPS + 1), None)
    assert opt.param_groups[0]["lr"] == 0.0
    save_learner_state(tmp_path / "ck", net, opt, sched, rank=0, info={"updates": STEPS})

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    sched = make_scheduler(opt, LearnerConfig(lr=0.1, lr_schedule="linear", warmup_steps=1), 2 * STEPS)
    load_learner_state(tmp_path / "ck", net, opt, sched, rank=0)
    # update 5 of 8 (0-based 4), warm-up 1: 0.1 * (1 - (4 - 1) / (8 - 1)) = 0.1 * 4 / 7
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 4 / 7) == 0.1 * lr_multiplier(4, "linear", 1, 8)
    _steps(net, opt, sched, [STEPS + 1], None)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 3 / 7)  # and the schedule goes on from there
