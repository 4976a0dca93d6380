"""The CLIP-style dual encoder against Hugging Face ``CLIPModel`` (random tiny weights, converted by our loader),
the OpenAI key layout, end-of-text pooling and the contrastive loss."""
from __future__ import annotations

import math

import pytest
import torch

from model.clip import DualEncoder, DualEncoderConfig, TextConfig, VisionConfig, clip_contrastive_loss
from model.clip_weights import hf_to_openai, load_hf_folder, load_openai_file

transformers = pytest.importorskip("transformers")

VOCAB = 99  # EOT = 98, the largest id, as in CLIP's BPE


def _tiny_hf(tmp_path, act: str):
    """A random tiny HF CLIPModel saved to a folder, and the model itself."""
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, hidden_act=act, eos_token_id=VOCAB - 1, bos_token_id=VOCAB - 2,
                pad_token_id=0)
    vision = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act=act)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    torch.manual_seed(0)
    hf = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb them so that a swapped LN would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / act)
    return hf, tmp_path / act


def _ids(lengths: list[int], total: int) -> torch.Tensor:
    """Rows ``SOT w.. EOT`` padded with EOT after it (HF's tokenizer pads with EOT; we pool the first)."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n in lengths:
        words = torch.randint(1, VOCAB - 2, (n,), generator=gen)
        rows.append(torch.cat([torch.tensor([VOCAB - 2]), words, torch.full((total - n - 1,), VOCAB - 1)]))
    return torch.stack(rows)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_parity_text_and_image(tmp_path, act):
    hf, folder = _tiny_hf(tmp_path, act)
    ours, cfg = load_hf_folder(folder)
    assert cfg.text.act == act and cfg.vision.act == act
    ids = _ids([3, 7, 12], 16)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_t = hf.get_text_features(input_ids=ids)
        ref_v = hf.get_image_features(pixel_values=pixels)
        ref_t = getattr(ref_t, "pooler_output", ref_t)
        ref_v = getattr(ref_v, "pooler_output", ref_v)
        t, v = ours.encode_text(ids), ours.encode_image(pixels)
    assert t.shape == ref_t.shape and v.shape == ref_v.shape
    assert torch.allclose(t, ref_t, atol=1e-5, rtol=0), (t - ref_t).abs().max()
    assert torch.allclose(v, ref_v, atol=1e-5, rtol=0), (v - ref_v).abs().max()
    assert math.isclose(ours.logit_scale.item(), hf.logit_scale.item(), rel_tol=0, abs_tol=0)


def test_wrong_activation_changes_features(tmp_path):
    """The trap: QuickGELU weights in a GELU tower load without error but give other features."""
    _, folder = _tiny_hf(tmp_path, "quick_gelu")
    ours, cfg = load_hf_folder(folder)
    cfg.text.act = "gelu"
    wrong = DualEncoder(cfg)
    wrong.load_state_dict(ours.state_dict())
    ids = _ids([5], 16)
    with torch.no_grad():
        assert (ours.encode_text(ids) - wrong.eval().encode_text(ids)).abs().max() > 1e-3


def test_openai_key_layout_round_trip(tmp_path):
    """HF -> OpenAI keys -> a state-dict file -> load_openai_file gives the same model."""
    hf, folder = _tiny_hf(tmp_path, "quick_gelu")
    ours, _ = load_hf_folder(folder)
    openai_state = hf_to_openai(hf.state_dict())
    assert "transformer.resblocks.1.attn.in_proj_weight" in openai_state and "visual.proj" in openai_state
    torch.save(openai_state, tmp_path / "openai.pt")
    loaded, cfg = load_openai_file(tmp_path / "openai.pt", heads=(4, 4))  # tiny widths: not width / 64
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.text.eos_id) == (32, 8, VOCAB - 1)
    for key, value in ours.state_dict().items():
        name = key.removeprefix("text.") if key.startswith("text.") else key
        assert torch.equal(openai_state[name].float(), value), key
        assert torch.equal(loaded.state_dict()[key], value), key


def test_eos_pooling_ignores_padding_after_eos():
    cfg = DualEncoderConfig(text=TextConfig(width=32, layers=2, heads=4, ffn=64, vocab_size=50, context_length=20,
                                            eos_id=2), vision=VisionConfig(kind="region", feat_dim=8, width=32,
                                                                           layers=1, heads=4, ffn=64), embed_dim=16)
    torch.manual_seed(0)
    model = DualEncoder(cfg).eval()
    short = torch.tensor([[0, 11, 12, 13, 2, 1, 1]])
    long = torch.tensor([[0, 11, 12, 13, 2] + [7] * 15])       # anything after EOS, longer sequence
    with torch.no_grad():
        a, b = model.encode_text(short), model.encode_text(long)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no end-of-text"):
        model.encode_text(torch.tensor([[0, 11, 12]]))


def test_region_tower_ignores_padded_regions():
    cfg = VisionConfig(kind="region", feat_dim=8, width=32, layers=2, heads=4, ffn=64)
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig(text=TextConfig(width=32, layers=1, heads=4, ffn=64, vocab_size=10,
                                                          context_length=8, eos_id=2), vision=cfg, embed_dim=16))
    feat, pos = torch.randn(1, 3, 8), torch.rand(1, 3, 7)
    padded_feat = torch.cat([feat, torch.randn(1, 2, 8)], dim=1)
    padded_pos = torch.cat([pos, torch.rand(1, 2, 7)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        a = model.encode_image(feat, pos, torch.ones(1, 3, dtype=torch.bool))
        b = model.encode_image(padded_feat, padded_pos, mask)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_contrastive_loss_hand_made():
    """Orthogonal unit pairs: cos = identity, logits = 100·I; loss = log(1 + (B-1)e^-100) both ways."""
    eye = torch.eye(3)
    loss = clip_contrastive_loss(eye * 5.0, eye * 0.5, 100.0)   # norms do not matter
    assert torch.isclose(loss, torch.log1p(torch.tensor(2.0) * math.exp(-100.0)), atol=1e-12)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    cos = torch.nn.functional.normalize(v, dim=1) @ torch.nn.functional.normalize(t, dim=1).t()
    logits = 100 * cos
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    cols = torch.nn.functional.cross_entropy(logits.t(), torch.arange(2))
    assert torch.isclose(clip_contrastive_loss(v, t, 100.0), 0.5 * (rows + cols))
    assert not torch.isclose(rows, cols)  # the case is asymmetric: both directions count
