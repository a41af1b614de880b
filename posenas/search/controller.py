"""AutoPose's branch controller (Sec. 3.2.1): an LSTM that emits one B-bit branch vector per
multi-scale module, trained by REINFORCE (Williams, 1992) on a reward such as val AP.

The paper gives the policy's form (an RNN, one B-dim vector per module), its optimiser
(Adam, lr 3.5e-3), N_ctr = 10 updates per epoch with a batch of 2 draws. Our choices where it
is silent: an LSTM cell of ``hidden`` units run once per module; its input is a learned start
vector, then an embedding of the previous module's bits; B independent Bernoulli logits per
module from a linear layer; the loss of a batch is
``-mean((R - baseline) * log pi(beta)) - entropy_weight * mean(H(pi))``, the baseline an
exponential moving average of the mean reward (``baseline_decay``), started at the first
batch's mean. Draws are a function of the generator passed in, so a resumed search (and
every torchrun rank) repeats them exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

Branches = tuple[tuple[int, ...], ...]


@dataclass
class Draw:
    """One sampled architecture: its bits, (with grad) the log-probability and entropy, and
    per module the probability of each bit on the path taken."""

    branches: Branches
    log_prob: torch.Tensor
    entropy: torch.Tensor
    probs: list[list[float]]


class BranchController(nn.Module):
    """pi(theta) over (modules x B) bits."""

    def __init__(self, modules: int, branches: int, hidden: int = 64):
        super().__init__()
        self.modules_, self.branches = modules, branches
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.Linear(branches, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.logits = nn.Linear(hidden, branches)

    def sample(self, generator: torch.Generator | None = None, greedy: bool = False) -> Draw:
        """A branch vector per module (``greedy``: the most likely bits)."""
        h = c = torch.zeros(1, self.cell.hidden_size)
        x = self.start
        rows, probs, log_prob, entropy = [], [], torch.zeros(()), torch.zeros(())
        for _ in range(self.modules_):
            h, c = self.cell(x, (h, c))
            p = torch.sigmoid(self.logits(h)[0])
            if greedy:
                bits = (p > 0.5).float()
            else:
                bits = (torch.rand(self.branches, generator=generator) < p.detach()).float()
            dist = torch.distributions.Bernoulli(probs=p.clamp(1e-6, 1 - 1e-6))
            log_prob = log_prob + dist.log_prob(bits).sum()
            entropy = entropy + dist.entropy().sum()
            rows.append(tuple(int(b) for b in bits.tolist()))
            probs.append([float(v) for v in p.detach()])
            x = self.embed(bits[None])
        return Draw(tuple(rows), log_prob, entropy, probs)

    def probabilities(self) -> list[list[float]]:
        """Per module, the probability of each bit along the greedy path (for plots and logs)."""
        with torch.no_grad():
            return self.sample(greedy=True).probs


class Reinforce:
    """REINFORCE with a moving-average baseline and an entropy bonus, over a controller."""

    def __init__(self, controller: BranchController, lr: float = 3.5e-3, entropy_weight: float = 1e-3,
                 baseline_decay: float = 0.9):
        self.controller = controller
        self.opt = torch.optim.Adam(controller.parameters(), lr=lr)
        self.entropy_weight, self.baseline_decay = entropy_weight, baseline_decay
        self.baseline: float | None = None

    def update(self, reward: Callable[[Branches], float], batch: int, generator: torch.Generator) -> dict[str, Any]:
        """One policy-gradient step on ``batch`` draws; returns what it saw."""
        draws = [self.controller.sample(generator) for _ in range(batch)]
        rewards = [float(reward(d.branches)) for d in draws]
        mean = sum(rewards) / len(rewards)
        baseline = mean if self.baseline is None else self.baseline
        log_prob = torch.stack([d.log_prob for d in draws])
        entropy = torch.stack([d.entropy for d in draws]).mean()
        advantage = torch.tensor(rewards) - baseline
        loss = -(advantage * log_prob).mean() - self.entropy_weight * entropy
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.baseline = baseline * self.baseline_decay + (1 - self.baseline_decay) * mean
        return {"rewards": rewards, "branches": [[list(r) for r in d.branches] for d in draws],
                "baseline": self.baseline, "entropy": float(entropy.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict(), "optimizer": self.opt.state_dict(),
                "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.opt.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]


def branch_generator(seed: int, *where: Any) -> torch.Generator:
    """A generator for draws at a place in the search (e.g. ("step", 12)): resumable, rank-independent."""
    return torch.Generator().manual_seed(random.Random(":".join(map(str, ("autopose", seed, *where)))).getrandbits(62))


def bits_of(branches: Sequence[Sequence[int]]) -> str:
    """"1010|0101|...": one module's bits between bars (logs, plots)."""
    return "|".join("".join(map(str, row)) for row in branches)
