"""Shared fixtures: a tiny BERT built on the spot, paths to demo and real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from xinfang.settings import DEMO_DATA_DIR, SHARED_DATA_DIR

# Common characters of petitions: enough for the tiny tokenizer to see real words, not only [UNK].
TINY_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"
    "行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些"
    "然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公"
    "无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将"
    "组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处府研质信访投诉举报物业小区停车收费噪音施工拖欠工资"
    "学校幼儿园医院医保社保教育交通公交环境污染城管街道社区县市乡镇村房屋拆迁补偿违建领导您好请求反映希望尽快解决处理"
    "，。？！：；、（）《》0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-hidden BERT with a character vocabulary, saved as a local HF checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(dict.fromkeys(TINY_CHARS))
    (out / "vocab.txt").write_text("\n".join(specials + chars) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(specials) + len(chars), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def demo_data_path() -> Path:
    return DEMO_DATA_DIR / "petitions.jsonl"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA_DIR.exists():
        pytest.skip(f"real data not present at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


@pytest.fixture(scope="session")
def service_models(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path | None]:
    """Tiny topic + department bundles (demo data) and a repeat scorer path for the service tests."""
    from service_fixtures import scorer_path, train_tiny_bundles

    bundles = train_tiny_bundles(tiny_encoder_dir, tmp_path_factory.mktemp("service-bundles"))
    return bundles, scorer_path(tiny_encoder_dir, tmp_path_factory.mktemp("service-scorer"))


@pytest.fixture(scope="session")
def repeats_model(tiny_encoder_dir, tmp_path_factory):
    """A `repeats train`-shaped directory: the tiny encoder and a scorer fitted on the demo pairs with it."""
    import shutil

    from xinfang.models.embedder import Embedder
    from xinfang.records import load_records, read_jsonl
    from xinfang.settings import DEMO_DATA_DIR
    from xinfang.training.repeats import fit_repeat_scorer

    out = tmp_path_factory.mktemp("repeats-model")
    shutil.copytree(tiny_encoder_dir, out / "embedder")
    by_id = {r["id"]: r for r in load_records(DEMO_DATA_DIR / "petitions.jsonl")}
    scorer = fit_repeat_scorer(read_jsonl(DEMO_DATA_DIR / "repeat_pairs.jsonl"), by_id, Embedder(out / "embedder"))
    scorer.save(out / "repeat-scorer.json")
    return out
