"""Jurisdiction (属地): the 市/区/县 (masked like A市, A3区, K8县, or real like 临江区) and the 乡镇/街道 (东湖街道,
桃源镇) named in a petition, and whether it names a township-level body (a 街道/乡镇, a village or a community)."""

from __future__ import annotations

import re

__all__ = ["extract_jurisdiction", "jurisdiction_levels", "names_level"]

_MASKED = re.compile(r"(?<![A-Za-z0-9])([A-Z][0-9]{0,2})(市|区|县)")
# A unit suffix followed by these is a word, not a place: 市场, 市民, 区域, 县城 stay, 乡村 …
_SUFFIX = re.compile(r"街道|市(?![场民值面容级井郊])|区(?![域别块间分])|县|镇|乡(?![村下亲土愁])")
_UNIT_CHARS = set("市区县镇乡省")
# Leading characters that are not part of a place name (verbs, prepositions, admin suffixes, etc.)
_LEAD_STOP = set("在住于是的到从了和与及我你他她省市区县镇乡道个向对给把被让位处内外里号路街村组将由请该本全原新老")
# Words ending in a unit suffix that are not place names.
_NOT_PLACE = {
    "小区", "社区", "园区", "景区", "城区", "市区", "片区", "校区", "郊区", "山区", "辖区", "军区", "街区", "库区", "厂区",
    "矿区", "营区", "灾区", "湖区", "林区", "牧区", "东区", "西区", "南区", "北区", "中区", "本区", "全区", "该区", "我区",
    "超市", "城市", "菜市", "夜市", "门市", "全市", "本市", "该市", "我市", "股市", "楼市", "都市", "上市", "闹市", "集市",
    "开市", "早市", "黑市", "花市", "车市", "市市", "省市", "各市", "州市", "地州市",
    "全县", "本县", "该县", "我县", "各县", "郡县", "州县",
    "城镇", "乡镇", "集镇", "本镇", "全镇", "该镇", "我镇", "各镇", "小镇", "古镇", "重镇", "市镇",
    "城乡", "家乡", "老乡", "下乡", "回乡", "故乡", "同乡", "本乡", "全乡", "该乡", "各乡", "我乡", "异乡", "他乡", "返乡",
    "县乡", "镇乡", "水乡", "梦乡",
    "街道", "各街道", "本街道", "该街道",
}
_LEVEL = {"市": "city", "区": "county", "县": "county", "镇": "township", "乡": "township", "街道": "township"}


# Verbs and function words that end a run of characters before a unit suffix: the name starts after the last one
# ("说要问街道" names no place; "反映星沙镇" names 星沙镇).
_INNER_STOP = set("说要问找去跟让请给帮向对把被在是的了和与及我你他她们这那有没不也都就还又再已曾才会能可该映诉举报询议求"
                  "至到谢得用")


def _clean_name(name: str, suffix: str) -> str | None:
    cut = max((i for i, ch in enumerate(name) if ch in _INNER_STOP), default=-1)
    name = name[cut + 1:]
    while name and name[0] in _LEAD_STOP:
        name = name[1:]
    if len(name) > 4:
        name = name[-4:]
    if len(name) < 2 or (name + suffix) in _NOT_PLACE or name[-1] in "小社园景城片校郊山辖超菜夜门" or \
            (suffix == "区" and name[-1] in "民属舍活宅商业厂矿发开制置一二三四五六七八九十"):
        # 居民区, 家属区, 宿舍区, 开发区, 经开区, 限制区, 安置区, 三区 …
        return None
    return name + suffix


def jurisdiction_levels(text: str | None) -> dict[str, str]:
    """First 市 (city), 区/县 (county) and 乡镇/街道 (township) named in the text, masked or real."""
    found: dict[str, tuple[int, str]] = {}
    if not text:
        return {}
    for m in _MASKED.finditer(text):
        found.setdefault(_LEVEL[m.group(2)], (m.start(), m.group(0)))
    for m in _SUFFIX.finditer(text):
        suffix, start = m.group(0), m.start()
        j = start
        while j > 0 and start - j < 6 and "\u4e00" <= text[j - 1] <= "\u9fff" and text[j - 1] not in _UNIT_CHARS:
            j -= 1
        name = _clean_name(text[j:start], suffix)
        if name is None:
            continue
        level = _LEVEL[suffix]
        pos = m.end() - len(name)
        if level not in found or pos < found[level][0]:
            found[level] = (pos, name)
    return {lvl: v[1] for lvl, v in sorted(found.items(), key=lambda kv: kv[1][0])}


def extract_jurisdiction(text: str | None) -> str | None:
    """The most specific county-level unit named: 区/县, else 市, else 乡镇/街道; None when none."""
    levels = jurisdiction_levels(text)
    for lvl in ("county", "city", "township"):
        if lvl in levels:
            return levels[lvl]
    return None


# A village, village group or community named as such (村 after a name, 村委会, 社区, 居委会 ...)
_TOWNSHIP_BODY = re.compile(r"[\u4e00-\u9fffA-Z0-9]{1,6}村(?![民庄落镇])|村委|村民小组|村组|[组队]长|社区|居委会|街道办")


def names_level(text: str | None) -> set[str]:
    """The levels a petition names: `city`, `county`, `township` (a 街道/乡镇 by name, or a village/community)."""
    levels = set(jurisdiction_levels(text))
    if text and _TOWNSHIP_BODY.search(text):
        levels.add("township")
    return levels
