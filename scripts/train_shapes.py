"""Train the bundled text-to-image model ``shapes`` (seeded, CPU; see docs/models.md).

    python scripts/train_shapes.py [--out src/reverie/models/shapes] [--threads 1]

Writes a diffusers ``StableDiffusionPipeline`` folder (safetensors) trained on
:mod:`reverie.shapes` images drawn on the fly (the 50 training combinations; the 10 in
``reverie.shapes.HELD_OUT`` are never drawn):

1. ``AutoencoderKL`` (channels 16/32/32, factor 4: 32x32x3 images <-> 4x8x8 latents), loss
   MSE + L1 on pixels in [-1, 1] + 1e-4 x KL per latent dimension, Adam 1e-3 (warm-up, linear
   decay to a tenth), batch 32, 1200 steps;
   ``scaling_factor`` = 1 / std of the training latents (as Stable Diffusion's 0.18215).
2. ``UNet2DConditionModel`` (channels 32/64, cross-attention at both levels, no mid block) and a
   2-layer, 64-wide ``CLIPTextModel`` trained jointly from scratch on the VAE's latents
   (posterior samples): epsilon prediction on Stable Diffusion's ``scaled_linear`` betas
   (0.00085..0.012, 1000 steps), min-SNR-5 loss weights (Hang et al. 2023), 10% empty
   prompts (caption dropout, for classifier-free guidance), AdamW 1e-3 with warm-up and
   linear decay to a tenth, batch 64, 4000 steps, gradient clip 1, EMA 0.999 (the EMA weights
   are saved).
3. The decoder fine-tuned on the frozen encoder's latents (1500 steps, Adam 5e-4, MSE + L1 +
   L1 of image gradients: sharper edges; the latents, hence the UNet, are unaffected).

The ``CLIPTokenizer`` is written here: GPT-2's 256 byte-level characters (and their ``</w>``
forms), merges that make each prompt word one token, then the start/end tokens. With
``--checkpoint`` the run saves its state every 250 steps and ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import transformers

from reverie import shapes
from reverie._io import atomic_path
from reverie.discrete.constraints._vocabulary import _BYTE_LEVEL
from reverie.hub import atomic_dir
from reverie.pipelines.tokenizers import write_clip_tokenizer
from reverie.train.loop import ema_update

MAX_LENGTH = 16  # tokens per prompt (the longest prompt has 8 with start and end)
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1}


def build_tokenizer(folder: Path) -> transformers.CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges turn each prompt word into one token."""
    merges: list[str] = []
    tok = write_clip_tokenizer(folder, list(_BYTE_LEVEL), merges, MAX_LENGTH)
    while True:  # merge the first two pieces of a word that is still split, until none is
        split = [p for w in shapes.words() if len(p := tok.tokenize(w)) > 1]
        if not split:
            return tok
        merges.append(f"{split[0][0]} {split[0][1]}")
        tok = write_clip_tokenizer(folder, list(_BYTE_LEVEL), merges, MAX_LENGTH)


def build_models(vocab_size: int, bos: int, eos: int) -> tuple:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=shapes.SIZE,
    )
    unet = diffusers.UNet2DConditionModel(
        sample_size=shapes.SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2, mid_block_type=None,
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16,
    )
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=bos,
        eos_token_id=eos, pad_token_id=eos,
    ))
    return vae, unet, text


def lr_at(step: int, steps: int, lr: float, warmup: int = 200) -> float:
    """Linear warm-up, then linear decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (1 - 0.9 * (step - warmup) / max(1, steps - warmup))


class Run:
    """The training state (models, optimisers, generator, step counters) and its checkpoint."""

    def __init__(self, args: argparse.Namespace, tok_dir: Path):
        self.args = args
        self.tok = build_tokenizer(tok_dir)
        ids = self.tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
        self.vae, self.unet, self.text = build_models(len(self.tok), *ids)
        self.ema_unet, self.ema_text = copy.deepcopy(self.unet), copy.deepcopy(self.text)
        self.opt_vae = torch.optim.Adam(self.vae.parameters(), lr=args.vae_lr)
        self.opt_dec = torch.optim.Adam(decoder_parameters(self.vae), lr=args.decoder_lr)
        params = [*self.unet.parameters(), *self.text.parameters()]
        self.opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.dec_gen = torch.Generator().manual_seed(args.seed + 1)  # stage 3's own draws
        self.vae_step = self.step = self.dec_step = 0
        self.scaling = 1.0
        self.seconds = 0.0
        self.log: list[dict] = []

    def state(self) -> dict:
        keys = ("vae", "unet", "text", "ema_unet", "ema_text", "opt_vae", "opt", "opt_dec")
        return {**{k: getattr(self, k).state_dict() for k in keys},
                "gen": self.gen.get_state(), "dec_gen": self.dec_gen.get_state(),
                "vae_step": self.vae_step, "step": self.step, "dec_step": self.dec_step,
                "scaling": self.scaling, "seconds": self.seconds, "log": self.log}

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for k in ("vae", "unet", "text", "ema_unet", "ema_text", "opt_vae", "opt"):
            getattr(self, k).load_state_dict(state[k])
        self.gen.set_state(state["gen"])
        self.vae_step, self.step = state["vae_step"], state["step"]
        if "dec_step" in state:  # stage 3 started
            self.opt_dec.load_state_dict(state["opt_dec"])
            self.dec_gen.set_state(state["dec_gen"])
            self.dec_step = state["dec_step"]
        self.scaling, self.seconds, self.log = state["scaling"], state["seconds"], state["log"]

    def batch(self, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
        """``n`` training images in [-1, 1] and their prompts, from the run's generator."""
        seed = int(torch.randint(2**62, (1,), generator=gen or self.gen))
        images, prompts, _ = shapes.sample(n, seed)
        return 2 * images - 1, prompts

    def ids(self, prompts: list[str]) -> torch.Tensor:
        return self.tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                        return_tensors="pt").input_ids


def train_vae(run: Run, every) -> None:
    a = run.args
    vae = run.vae.train()
    while run.vae_step < a.vae_steps:
        for group in run.opt_vae.param_groups:
            group["lr"] = lr_at(run.vae_step, a.vae_steps, a.vae_lr, warmup=100)
        x, _ = run.batch(a.vae_batch)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(run.gen)).sample
        kl = post.kl().mean() / post.mean[0].numel()  # per latent dimension
        loss = (rec - x).pow(2).mean() + (rec - x).abs().mean() + 1e-4 * kl
        run.opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        run.opt_vae.step()
        run.vae_step += 1
        if run.vae_step == a.vae_steps:
            with torch.no_grad():  # latent scale as Stable Diffusion's: 1 / std of latents
                x, _ = run.batch(1024)
                run.scaling = float(1 / vae.encode(x).latent_dist.mean.std())
        every(run, "vae", run.vae_step, loss.item())
    vae.eval().requires_grad_(False)


def train_unet(run: Run, every) -> None:
    a = run.args
    sched = diffusers.DDPMScheduler(**SCHEDULER)
    abar = sched.alphas_cumprod
    run.unet.train()
    run.text.train()
    params = [*run.unet.parameters(), *run.text.parameters()]
    while run.step < a.steps:
        for group in run.opt.param_groups:
            group["lr"] = lr_at(run.step, a.steps, a.lr)
        x, prompts = run.batch(a.batch)
        drop = torch.rand(a.batch, generator=run.gen) < a.caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        with torch.no_grad():
            z = run.vae.encode(x).latent_dist.sample(run.gen) * run.scaling
        t = torch.randint(0, 1000, (a.batch,), generator=run.gen)
        eps = torch.randn(z.shape, generator=run.gen)
        zt = sched.add_noise(z, eps, t)
        cond = run.text(run.ids(prompts))[0]
        pred = run.unet(zt, t, encoder_hidden_states=cond).sample
        snr = abar[t] / (1 - abar[t])
        weight = snr.clamp(max=5.0) / snr  # min-SNR-5 for epsilon prediction
        loss = (weight * (pred - eps).pow(2).mean((1, 2, 3))).mean()
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        run.opt.step()
        ema_update(run.ema_unet, run.unet, a.ema, run.step)
        ema_update(run.ema_text, run.text, a.ema, run.step)
        run.step += 1
        every(run, "unet", run.step, loss.item())


def decoder_parameters(vae: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]


def train_decoder(run: Run, every) -> None:
    """Stage 3: sharpen the decoder on the frozen encoder's latents (as Stable Diffusion's
    ft-MSE VAE): MSE + L1 + L1 of the image gradients, so the latents the UNet learned from
    are unchanged. Uses its own generator, so it may equally run before stage 2."""
    a = run.args
    vae = run.vae
    params = decoder_parameters(vae)
    for p_ in params:
        p_.requires_grad_(True)
    vae.decoder.train()
    while run.dec_step < a.decoder_steps:
        for group in run.opt_dec.param_groups:
            group["lr"] = lr_at(run.dec_step, a.decoder_steps, a.decoder_lr, warmup=50)
        x, _ = run.batch(a.vae_batch, run.dec_gen)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(run.dec_gen)
        rec = vae.decode(z).sample
        err = rec - x
        edges = sum((torch.diff(err, dim=d)).abs().mean() for d in (-1, -2))
        loss = err.pow(2).mean() + err.abs().mean() + edges
        run.opt_dec.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        run.opt_dec.step()
        run.dec_step += 1
        every(run, "decoder", run.dec_step, loss.item())
    vae.eval().requires_grad_(False)


def save(run: Run, out: Path, tok_dir: Path) -> None:
    vae = copy.deepcopy(run.vae)
    vae.register_to_config(scaling_factor=run.scaling)
    tok = transformers.CLIPTokenizer(vocab=str(tok_dir / "vocab.json"),
                                     merges=str(tok_dir / "merges.txt"),
                                     model_max_length=MAX_LENGTH)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=run.ema_text.eval(), tokenizer=tok, unet=run.ema_unet.eval(),
        scheduler=diffusers.DPMSolverMultistepScheduler(**SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    a = run.args
    meta = {
        "format": "reverie", "format_version": 1, "name": "shapes",
        "description": "text-to-image: 32x32 coloured shapes (circle/square/triangle in red/"
        "green/blue/yellow, left/right/top/bottom/middle), e.g. 'a red circle on the left'",
        "sample_shape": [4, shapes.SIZE // 4, shapes.SIZE // 4],
        "num_classes": None, "null_class": False,
        "prompts": "a COLOUR SHAPE PLACE (reverie.shapes.prompt); held-out combinations: "
        + "; ".join(shapes.prompt(*c) for c in shapes.HELD_OUT),
        "training": {
            "script": "scripts/train_shapes.py", "seed": a.seed, "threads": a.threads,
            "vae_steps": run.vae_step, "vae_batch": a.vae_batch, "vae_lr": a.vae_lr,
            "decoder_steps": run.dec_step, "decoder_lr": a.decoder_lr,
            "steps": run.step, "batch_size": a.batch, "lr": a.lr, "ema": a.ema,
            "caption_dropout": a.caption_dropout, "scaling_factor": run.scaling,
            "seconds": round(run.seconds, 1),
            "final_loss": {e["stage"]: e["loss"] for e in run.log},  # last logged, per stage
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "processor": _cpu(),
            "data": "reverie.shapes.sample(n, seed) on shapes.TRAIN_COMBOS (50 of 60 "
            "combinations), drawn on the fly: a fresh seed per batch from the run's generator",
            "objective": "epsilon, min-SNR-5 weights, scaled_linear betas 0.00085..0.012",
        },
    }
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "reverie.json").write_text(json.dumps(meta, indent=2) + "\n")


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="src/reverie/models/shapes")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (saved every 250 steps)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--export", action="store_true",
                   help="write the model of --checkpoint as it stands (EMA weights), no training")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1200)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=4000, help="UNet + text encoder steps")
    p.add_argument("--decoder-steps", type=int, default=1500, help="decoder fine-tuning steps")
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    tok_dir = Path(tempfile.mkdtemp(prefix="shapes-tokenizer-"))
    run = Run(args, tok_dir)
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if args.resume or args.export:
        if ckpt is None or not ckpt.exists():
            raise SystemExit(f"--resume/--export need an existing --checkpoint, got {ckpt}")
        run.load(ckpt)
        print(f"resumed at vae step {run.vae_step}, unet step {run.step}, decoder step "
              f"{run.dec_step}", flush=True)
    if args.export:
        run.vae.eval()
        save(run, out, tok_dir)
        print(f"wrote {out} (step {run.step}; {run.seconds:.0f} s of training)")
        return
    start = time.perf_counter() - run.seconds
    losses: list[float] = []

    def every(run: Run, stage: str, step: int, loss: float) -> None:
        run.seconds = time.perf_counter() - start
        losses.append(loss)
        if step % 100 == 0:
            run.log.append({"stage": stage, "step": step, "loss": sum(losses) / len(losses),
                            "seconds": round(run.seconds, 1)})
            print(json.dumps(run.log[-1]), flush=True)
            losses.clear()
        if ckpt is not None and step % 250 == 0:
            run.save(ckpt)

    train_vae(run, every)
    train_unet(run, every)
    train_decoder(run, every)
    run.seconds = time.perf_counter() - start
    save(run, out, tok_dir)
    print(f"wrote {out} after {run.seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
