"""AutoPose's branch controller: REINFORCE finds a known best vector, the entropy bonus and the
baseline act as they should, and draws and state resume exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from posenas.search.controller import BranchController, Reinforce, bits_of, branch_generator

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = ((1, 0, 1, 0), (0, 1, 1, 0), (0, 0, 0, 1))


def matching(branches) -> float:
    """A toy reward: the share of bits equal to TARGET's."""
    return sum(a == b for row, want in zip(branches, TARGET) for a, b in zip(row, want)) / 12


def test_reinforce_on_a_toy_reward_converges_to_the_best_vector():
    torch.manual_seed(0)
    controller = BranchController(3, 4)
    agent = Reinforce(controller)  # the paper's lr 3.5e-3, batch 2
    start = matching(controller.sample(greedy=True).branches)
    for i in range(400):
        agent.update(matching, 2, branch_generator(0, "toy", i))
        if controller.sample(greedy=True).branches == TARGET:
            break
    assert controller.sample(greedy=True).branches == TARGET, (start, i)
    assert start < 0.8  # it had something to learn
    for k in range(100):  # and it stays there, growing surer
        agent.update(matching, 2, branch_generator(0, "toy-more", k))
    assert controller.sample(greedy=True).branches == TARGET
    sure = [p if bit else 1 - p for row, want in zip(controller.probabilities(), TARGET) for p, bit in zip(row, want)]
    assert sum(sure) / len(sure) > 0.7


def test_the_entropy_bonus_pulls_a_sure_policy_back_and_is_all_there_is_under_a_constant_reward():
    def run(entropy_weight: float) -> list[list[float]]:
        torch.manual_seed(1)
        controller = BranchController(2, 3)
        with torch.no_grad():
            controller.logits.bias.fill_(3.0)  # p(bit) ~ 0.95 everywhere
        agent = Reinforce(controller, lr=0.05, entropy_weight=entropy_weight)
        for i in range(30):
            agent.update(lambda b: 0.7, 2, branch_generator(0, "const", i))
        return controller.probabilities()

    before = BranchController(2, 3)
    with torch.no_grad():
        before.logits.bias.fill_(3.0)
    still = run(0.0)
    pulled = run(0.1)
    mean = lambda rows: sum(sum(r) for r in rows) / sum(len(r) for r in rows)  # noqa: E731
    # constant reward = baseline after the first batch: no policy gradient, nothing moves without entropy
    assert abs(mean(still) - mean(before.probabilities())) < 0.02
    assert mean(pulled) < mean(still) - 0.1


def test_the_baseline_is_a_moving_average_of_the_mean_reward():
    controller = BranchController(1, 2)
    agent = Reinforce(controller, baseline_decay=0.9)
    rewards = iter([1.0, 0.0, 0.5, 0.5])
    agent.update(lambda b: next(rewards), 2, branch_generator(0, "b", 0))
    assert agent.baseline == pytest.approx(0.5)  # started at the first batch's mean
    agent.update(lambda b: next(rewards), 2, branch_generator(0, "b", 1))
    assert agent.baseline == pytest.approx(0.5)
    rewards = iter([1.0, 1.0])
    agent.update(lambda b: next(rewards), 2, branch_generator(0, "b", 2))
    assert agent.baseline == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)


def test_draws_and_state_resume_exactly():
    torch.manual_seed(0)
    a = Reinforce(BranchController(3, 4))
    for i in range(5):
        a.update(matching, 2, branch_generator(7, "r", i))
    state = copy.deepcopy(a.state_dict())  # as a checkpoint file holds it (no tensor shared with a)
    b = Reinforce(BranchController(3, 4))
    b.load_state_dict(state)
    for i in range(5, 8):
        seen_a = a.update(matching, 2, branch_generator(7, "r", i))
        seen_b = b.update(matching, 2, branch_generator(7, "r", i))
        assert seen_a == seen_b
    assert all(torch.equal(p, q) for p, q in zip(a.controller.parameters(), b.controller.parameters()))
    # a draw is a function of its place only
    assert (a.controller.sample(branch_generator(7, "step", 3)).branches ==
            a.controller.sample(branch_generator(7, "step", 3)).branches)
    assert bits_of(((1, 0), (0, 1))) == "10|01"
