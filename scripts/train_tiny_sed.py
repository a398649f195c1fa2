"""A tiny trained SED example: an MLP over a length-3 sequence of a 3-token Markov chain,
trained with SED's self-conditioned cross-entropy (reverie.discrete.embedding.sed_loss) on a
fixed embedding table, then sampled with and without self-conditioning; prints the TV to the
exact law and Plaid's bound beside the law's entropy (the exact model's numbers in
tests/discrete/test_embedding_diffusion.py)."""

import argparse
import itertools
import json
import math

import torch

from reverie.discrete.embedding import plaid_nelbo, sample, sed_loss, sigma_grid


class TinySED(torch.nn.Module):
    """``logits_fn(z, sigma, prev)``: an MLP on the flattened scaled ``z``, ``prev``, log sigma."""

    def __init__(self, length: int, vocab: int, dim: int, hidden: int = 128):
        super().__init__()
        self.length, self.vocab = length, vocab
        self.f = torch.nn.Sequential(
            torch.nn.Linear(2 * length * dim + 1, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, length * vocab))

    def forward(self, z, sigma, prev):
        sig = torch.as_tensor(sigma, dtype=z.dtype).reshape(-1, 1)
        scaled = z / torch.sqrt(1 + sig**2)[..., None]  # unit-scale input at every noise level
        inp = torch.cat([scaled.flatten(1), prev.flatten(1), sig.log() / 4], 1)
        return self.f(inp).reshape(-1, self.length, self.vocab)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    p0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    tr = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], dtype=torch.float64)
    probs = p0[seqs[:, 0]] * tr[seqs[:, 0], seqs[:, 1]] * tr[seqs[:, 1], seqs[:, 2]]
    table = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table = table / table.norm(dim=-1, keepdim=True)

    def tv(x):
        counts = torch.bincount((x * torch.tensor([9, 3, 1])).sum(-1), minlength=27).double()
        return 0.5 * (counts / len(x) - probs).abs().sum().item()

    def evaluate(net):
        with torch.no_grad():
            out = {f"tv_self_condition_{sc}": tv(sample(
                net, table, 4000, 3, sigma_grid(0.02, 20, 30), self_condition=sc,
                generator=torch.Generator().manual_seed(1))) for sc in (True, False)}
            draw = torch.multinomial(probs, 20000, True, generator=torch.Generator().manual_seed(3))
            tok = seqs[draw]
            out["plaid_nelbo"] = plaid_nelbo(net, tok, table, 0.02, 20,
                                             generator=torch.Generator().manual_seed(4)).mean().item()
        return out

    net = TinySED(3, 3, 4).double()
    result = {"entropy": -(probs * probs.log()).sum().item(), "untrained": evaluate(net)}
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.steps):
        tok = seqs[torch.multinomial(probs, 256, True, generator=g)]
        sigma = 0.02 * torch.exp(torch.rand(256, generator=g, dtype=torch.float64) * math.log(1000))
        loss = sed_loss(net, tok, table, sigma, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    result["trained"] = evaluate(net)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
