"""Rewards for inference-time search and alignment: ``reward(x0) -> Tensor[batch]``.

* :class:`LinearReward` -- ``w . x + b``; with a Gaussian-mixture prior its tilted target and
  soft value are exact (:class:`reverie.reference.TiltedMixture`).
* :class:`ClassifierReward` -- ``log p(label | x)`` (or the probability) of a torch classifier;
  differentiable, so gradient methods (DITTO) can use it too.
* :func:`digit_classifier` -- a small MLP on scikit-learn's 8x8 digits, trained at first use in
  a few seconds on the training split and cached in memory; ``classifier:7`` on the command
  line is ``ClassifierReward(digit_classifier(), 7)``.
* :func:`digit_judge` -- an independent classifier (a scikit-learn SVM) that measures the class
  accuracy of steered samples without grading them with the reward's own network.
* :func:`parse_reward` -- the command line's reward specifications.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "LinearReward",
    "ClassifierReward",
    "digit_classifier",
    "digit_judge",
    "parse_reward",
    "REWARD_SPECS",
]

#: The forms :func:`parse_reward` accepts.
REWARD_SPECS = ("classifier:LABEL", "linear:W1,W2,...")


class LinearReward:
    """``r(x) = w . flatten(x) + b`` (differentiable). ``weight``: ``D`` numbers."""

    def __init__(self, weight: Tensor | Sequence[float], bias: float = 0.0):
        w = torch.as_tensor(weight, dtype=torch.float64).flatten()
        if w.numel() == 0 or not bool(torch.isfinite(w).all()):
            raise ValueError("weight must be a non-empty vector of finite numbers")
        self.weight = w
        self.bias = float(bias)

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.weight.numel():
            raise ValueError(
                f"LinearReward has {self.weight.numel()} weights but the samples have "
                f"{flat.shape[1]} entries (shape {tuple(x.shape)})"
            )
        return flat @ self.weight.to(flat.dtype).to(flat.device) + self.bias

    def tilt(self, mixture, temperature: float = 1.0):
        """The exact tilted target ``mixture(x) exp(r(x) / T)``
        (:class:`reverie.reference.TiltedMixture`)."""
        from reverie.reference import TiltedMixture

        return TiltedMixture(mixture, self.weight, temperature, self.bias)

    def __repr__(self) -> str:
        return f"LinearReward(D={self.weight.numel()}, bias={self.bias})"


class ClassifierReward:
    """``r(x) = log p(label | x)`` from a torch classifier returning logits ``[B, classes]``
    (``kind="prob"``: the probability itself). Differentiable in ``x``; the classifier runs in
    its own dtype and the reward is returned in float32."""

    def __init__(self, classifier: nn.Module, label: int, kind: str = "log_prob"):
        if not callable(classifier):
            raise TypeError(f"classifier must be a callable torch module, got {type(classifier)}")
        if kind not in ("log_prob", "prob"):
            raise ValueError(f"kind must be 'log_prob' or 'prob', got {kind!r}")
        self.classifier = classifier
        self.label = int(label)
        self.kind = kind

    def __call__(self, x: Tensor) -> Tensor:
        param = next(iter(self.classifier.parameters()), None) if isinstance(
            self.classifier, nn.Module) else None
        dtype = param.dtype if param is not None else x.dtype
        logits = self.classifier(x.to(dtype))
        if self.label >= logits.shape[-1]:
            raise ValueError(f"label {self.label} is out of range for {logits.shape[-1]} classes")
        logp = torch.log_softmax(logits, dim=-1)[:, self.label]
        out = logp if self.kind == "log_prob" else logp.exp()
        return out.float()

    def __repr__(self) -> str:
        return f"ClassifierReward(label={self.label}, kind={self.kind!r})"


class _DigitMLP(nn.Module):
    """64 -> 128 -> 128 -> 10 with SiLU; input ``[B, 1, 8, 8]`` in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@functools.lru_cache(maxsize=4)
def digit_classifier(seed: int = 0, epochs: int = 200) -> nn.Module:
    """A small MLP digit classifier trained on ``reverie.data.load_digits("train")`` (full-batch
    Adam, light Gaussian input noise so it stays smooth off the data), cached per ``seed``.
    Trains in a few seconds on a CPU; frozen (``requires_grad=False``) and in eval mode."""
    from reverie.data import load_digits

    x, y = load_digits("train")
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # parameter initialisation, restored below
    model = _DigitMLP()
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(epochs):
            noisy = x + 0.15 * torch.randn(x.shape, generator=g)
            loss = nn.functional.cross_entropy(model(noisy), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=1)
def digit_judge():
    """An independent digit classifier (scikit-learn ``SVC``, RBF kernel) trained on the
    training split; returns a function ``x [B, 1, 8, 8] -> predicted labels [B]``."""
    from sklearn.svm import SVC

    from reverie.data import load_digits

    x, y = load_digits("train")
    svc = SVC(C=10.0, gamma="scale").fit(x.reshape(len(x), -1).numpy(), y.numpy())

    def predict(images: Tensor) -> Tensor:
        flat = images.detach().reshape(images.shape[0], -1).to(torch.float32).cpu().numpy()
        return torch.from_numpy(svc.predict(flat)).long()

    return predict


def parse_reward(spec: str):
    """A reward from a command-line specification: ``classifier:LABEL`` (the digit
    classifier's log-probability of ``LABEL``) or ``linear:W1,W2,...`` (a linear reward)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"unknown reward {spec!r}; expected one of {', '.join(REWARD_SPECS)}")
    kind, _, arg = spec.partition(":")
    if kind == "classifier":
        try:
            label = int(arg)
        except ValueError:
            raise ValueError(f"classifier:LABEL needs an integer label, got {arg!r}") from None
        if not 0 <= label <= 9:
            raise ValueError(f"the digit classifier knows labels 0..9, got {label}")
        return ClassifierReward(digit_classifier(), label)
    if kind == "linear":
        try:
            weights = [float(v) for v in arg.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"linear:W1,W2,... needs numbers, got {arg!r}") from None
        return LinearReward(weights)
    raise ValueError(f"unknown reward {spec!r}; expected one of {', '.join(REWARD_SPECS)}")
