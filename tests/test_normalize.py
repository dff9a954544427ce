"""normalize_text / petition_text: noise removed, content kept, stable, bounded."""

from __future__ import annotations

import re
import sys
import time
import unicodedata

import pytest

from xinfang.models.normalize import normalize_text, petition_text

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")

SEED = (
    "尊敬的領導：您好！我們小區的物業公司不擔(dān)負(fù)起責任，，垃圾堆積已經３個月了。。</span>"
    "&nbsp;請儘快處理<br/>謝謝\x00\u200b！聯繫電話１３８００００００００\r\n"
)
SEED_CLEAN = (
    "尊敬的领导：您好！我们小区的物业公司不担负起责任，垃圾堆积已经3个月了。 请尽快处理 谢谢！联系电话13800000000"
)

CLEAN_PETITION = (
    "尊敬的领导：您好！我是东湖街道桂花小区的业主，小区东门外的路灯已经坏了两个月，晚上一片漆黑，"
    "老人孩子出行很不安全。多次向物业反映，物业说不归他们管。请问该找哪个部门？希望尽快修复……谢谢！"
)

SAMPLES = [
    SEED,
    CLEAN_PETITION,
    "担（dān）负(fu4)起 中国(China) 楼(A)栋 面积(m2) 为什么？？ 等了很久…… ——完",
    "温度<10度，A&amp;lt;b&amp;gt;C，，，<p>段落</p><!-- 注释 -->",
    "  \t\n\u3000多余　空白 \xa0 ",
    "臺灣 後來 發現 裡面 乾淨",
]


def test_seed_input_exact_output() -> None:
    assert normalize_text(SEED) == SEED_CLEAN


def test_pinyin_residue_forms() -> None:
    assert normalize_text("擔(dān)負(fù)起") == "担负起"
    assert normalize_text("担（dān）负（fù）起") == "担负起"
    assert normalize_text("担(dan1)负(fu4)起") == "担负起"
    assert normalize_text("负责(fù zé)人") == "负责人"


def test_parenthesised_content_that_is_not_pinyin_is_kept() -> None:
    for text in ["面积(m2)", "中国(China)", "楼(A)栋", "微信(wechat)号", "(dān)开头", "编号 (ab1)", "说明(见附件)"]:
        assert normalize_text(text) == text


def test_html_removed_text_kept() -> None:
    assert normalize_text("<div>物业<span>收费</span>问题</div>") == "物业收费问题"
    assert normalize_text("温度<10度，a < b") == "温度<10度，a < b"
    assert normalize_text("甲&amp;乙&lt;丙&gt;") == "甲&乙<丙>"
    assert normalize_text("第一行<br>第二行") == "第一行 第二行"


def test_punctuation_and_whitespace() -> None:
    assert normalize_text("好，，，的。。") == "好，的。"
    assert normalize_text("等了很久……——没人管") == "等了很久……——没人管"
    assert normalize_text("为什么？") == "为什么？"  # fullwidth Chinese punctuation is not made ASCII
    assert normalize_text("a\n\n b\t\tc") == "a b c"


def test_control_characters_removed() -> None:
    controls = [
        chr(cp) for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in ("Cc", "Cf") and not chr(cp).isspace()
    ]
    text = "甲" + "".join(controls) + "乙\ud800丙"
    assert normalize_text(text) == "甲乙丙"


def test_none_and_empty() -> None:
    assert normalize_text(None) == ""
    assert normalize_text("") == ""
    assert normalize_text(" \n\t ") == ""
    assert petition_text(None, None) == ""


@pytest.mark.parametrize("text", SAMPLES)
def test_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once


@pytest.mark.parametrize("max_chars", [1, 10, 57])
def test_length_bound(max_chars: int) -> None:
    for text in SAMPLES:
        out = normalize_text(text * 3, max_chars=max_chars)
        assert len(out) <= max_chars
        assert normalize_text(out, max_chars=max_chars) == out


def test_clean_petition_unchanged() -> None:
    assert normalize_text(CLEAN_PETITION) == CLEAN_PETITION


def test_traditional_petition_only_converted() -> None:
    import opencc

    traditional = "尊敬的領導：您好！我是東湖街道桂花小區的業主，小區東門外的路燈已經壞了兩個月，請儘快修復。"
    out = normalize_text(traditional)
    assert out == opencc.OpenCC("t2s").convert(traditional)
    assert "领导" in out and "路灯" in out


def test_every_han_character_survives() -> None:
    for text in [CLEAN_PETITION, SEED, SAMPLES[2], "温度<10度，A&amp;lt;b&amp;gt;C，，，<p>段落</p>"]:
        expected = HAN.findall(normalize_text(re.sub(r"[^\u3400-\u9fff]", "", text)))
        assert HAN.findall(normalize_text(text)) == expected
    assert HAN.findall(normalize_text(CLEAN_PETITION)) == HAN.findall(CLEAN_PETITION)


def test_large_input_is_fast_and_bounded() -> None:
    big = SEED * 2000  # > 100k characters
    assert len(big) > 100_000
    start = time.perf_counter()
    out = normalize_text(big, max_chars=200_000)
    assert time.perf_counter() - start < 5.0
    assert out.startswith(SEED_CLEAN)
    assert len(normalize_text(big)) <= 8000


def test_petition_text_joins_title_and_text() -> None:
    assert petition_text("路燈不亮", "東門路燈壞了") == "路灯不亮\n东门路灯坏了"
    assert petition_text("路灯不亮", "路灯不亮两个月了") == "路灯不亮两个月了"
    assert petition_text("路灯不亮", None) == "路灯不亮"
    assert petition_text("  ", "正文") == "正文"
    assert len(petition_text("标题" * 10, "正文" * 10, max_chars=15)) <= 15
