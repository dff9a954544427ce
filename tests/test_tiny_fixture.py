from transformers import AutoModel, AutoTokenizer


def test_tiny_encoder_loads_and_tokenizes_chinese(tiny_encoder_dir):
    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = AutoModel.from_pretrained(tiny_encoder_dir)
    enc = tok(["小区物业收停车费"], return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"][0].tolist()
    out = model(**enc).last_hidden_state
    assert out.shape[-1] == 32
