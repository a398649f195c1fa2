"""DiT folders (diffusers' ``DiTPipeline`` layout: class-conditional, no text) in reverie.

A folder with ``model_index.json`` (optionally an ``id2label`` table of class names),
``transformer/`` (``DiTTransformer2DModel``, or the legacy ``Transformer2DModel`` name),
``vae/`` (``AutoencoderKL``) and ``scheduler/`` loads into :class:`DiT`. Class labels take the
place of the prompt everywhere:

* ``p.sample([207, 360])`` (or ``p.sample(class_labels=...)``): one image per label (``n`` per
  label with ``n=``); a label is a class id (``0 <= id < num_classes``, an int or a string of
  digits) or a word of the folder's ``id2label`` table, looked up as diffusers'
  ``get_label_ids`` does (``p.sample(["golden retriever"])``; :attr:`DiT.labels` lists them),
  so ``reverie sample --model DIT_FOLDER --prompt "golden retriever"`` works too;
* :meth:`~DiT.encode_prompt` gives ``({"class_labels": ids}, {"class_labels": null})``: the
  negative branch of classifier-free guidance is the null class (``num_classes``, the extra
  row of the label embedding; diffusers hard-codes 1000, the ImageNet value) unless other
  negative labels are given;
* the transformer's learned variance is dropped (reverie reads the noise prediction), so
  guidance acts on the noise prediction alone, as in diffusers.

diffusers' ``DiTPipeline`` guides only when ``guidance_scale > 1``; reverie for any value other
than 1. Its images are ``sample_size`` latents square; reverie also samples other sizes
(multiples of the VAE factor times the patch size), which the model was not trained on.
"""

from __future__ import annotations

import json
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reverie.pipelines._transformer import TransformerPipeline, load_transformer_pipeline
from reverie.process import GaussianProcess

__all__ = ["DiT", "load_dit"]

COMPONENTS: dict[str, tuple[str, ...] | None] = {
    "transformer": ("DiTTransformer2DModel", "Transformer2DModel"),
    "vae": ("AutoencoderKL",),
    "scheduler": None,
}

Labels = int | str | list[int | str] | Tensor  # or a numpy array of ids


class _DiTFunction(nn.Module):
    """``fn(x, t, class_labels)``: the transformer at discrete VP times."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        return self.transformer(x, timestep=t, class_labels=class_labels, return_dict=False)[0]


class DiT(TransformerPipeline):
    """A DiT pipeline in reverie's terms (module docstring).

    Attributes besides :class:`~reverie.pipelines._base.LatentPipeline`'s: ``transformer``,
    ``num_classes``, ``null_class`` (the label of the unconditional branch), ``labels`` (label
    word -> class id, from ``id2label``). Conditioning: ``{"class_labels": [B]}`` (int64).
    """

    default_guidance = 4.0  # diffusers' default

    def __init__(self, *, transformer: nn.Module, id2label: dict[Any, str] | None = None,
                 **kwargs: Any):
        self.num_classes = int(transformer.config.num_embeds_ada_norm)
        self.null_class = self.num_classes  # the label embedding's extra (dropped-label) row
        # "tench, Tinca tinca" -> both words name class 0 (diffusers' DiTPipeline.labels)
        self.labels = dict(sorted(
            (word.strip(), int(key)) for key, names in (id2label or {}).items()
            for word in names.split(",")
        ))
        super().__init__(transformer=transformer, fn=_DiTFunction(transformer), **kwargs)

    def label_ids(self, labels: Labels) -> Tensor:
        """Class ids ``[B]`` (int64) of labels: ids (ints or digit strings) or ``id2label``
        words."""
        if hasattr(labels, "tolist"):  # a tensor or numpy array of ids
            labels = labels.tolist()
        items = [labels] if isinstance(labels, (int, str)) else labels
        if not isinstance(items, (list, tuple)) or not items:
            raise TypeError(f"class labels must be an int, a label word or a non-empty list of "
                            f"them, got {labels!r}")
        ids = []
        for v in items:
            if isinstance(v, str):
                if v in self.labels:
                    v = self.labels[v]
                elif v.strip().isdigit():  # "207", e.g. from the command line
                    v = int(v)
                else:
                    known = (f"one of the {len(self.labels)} words of id2label (DiT.labels)"
                             if self.labels else "a class id (this folder has no id2label)")
                    raise ValueError(f"unknown class label {v!r}; expected {known}")
            if isinstance(v, bool) or not isinstance(v, Integral) or not 0 <= v < self.num_classes:
                raise ValueError(f"class labels must be ids in [0, {self.num_classes}) or label "
                                 f"words, got {v!r}")
            ids.append(int(v))
        return torch.tensor(ids, dtype=torch.long)

    def encode_prompt(
        self,
        prompt: Labels,
        negative_prompt: Labels | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``({"class_labels": ids}, {"class_labels": negative ids})``; the negative defaults
        to the null class (unconditional), one per label. ``height`` / ``width`` are unused."""
        return self._conditioning(prompt, negative_prompt, height, width)

    def _conditioning(self, prompts, negatives, height, width):
        # labels (ids or words), not texts: encode_prompt hands them over unchanged
        ids = self.label_ids(prompts)
        if negatives is None:
            neg = torch.full_like(ids, self.null_class)
        else:
            neg = self.label_ids(negatives)
            neg = neg.expand_as(ids) if neg.numel() == 1 else neg  # one for all
            if neg.shape != ids.shape:
                raise ValueError(f"{neg.numel()} negative labels for {ids.numel()} labels; give "
                                 "one negative label or one per label")
        return {"class_labels": ids}, {"class_labels": neg}

    def sample(self, class_labels: Labels, negative_labels: Labels | None = None,
               **kwargs: Any) -> Any:
        """Class-conditional images (module docstring) with any reverie sampler; the other
        arguments are :meth:`LatentPipeline.sample`'s (``guidance_scale`` default 4)."""
        return super().sample(class_labels, negative_labels, **kwargs)


def load_dit(
    folder: Path,
    *,
    name: str | None = None,
    dtype: torch.dtype | None = None,
    process: GaussianProcess | None = None,
    prediction: str | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> DiT:
    """Load a ``DiTPipeline`` folder (module docstring); ``process`` / ``prediction`` override
    what the scheduler config says; ``dtype`` / ``device`` place the networks (the solver state
    dtype is ``sample``'s)."""
    folder = Path(folder)
    id2label = json.loads((folder / "model_index.json").read_text()).get("id2label")
    return load_transformer_pipeline(
        DiT, folder, COMPONENTS, "DiTTransformer2DModel", name=name, dtype=dtype,
        process=process, prediction=prediction, trust_pickle=trust_pickle, device=device,
        id2label=id2label,
    )
