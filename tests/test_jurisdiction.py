"""Jurisdiction (属地) extraction: real and masked place names, not the verbs in front of them."""

import pytest

from xinfang.models.router import extract_jurisdiction


@pytest.mark.parametrize(("text", "expected"), [
    ("A7县某村道路破损严重", "A7县"),
    ("反映星沙镇垃圾站臭气熏天", "星沙镇"),
    ("物业说要问街道，街道说要问物业", None),
    ("我住在临江区东湖街道桂花小区", "临江区"),
    ("请东湖街道尽快处理", "东湖街道"),
    ("小区门口的超市占道经营", None),
    ("希望城乡结合部加强管理", None),
])
def test_extract_jurisdiction(text, expected):
    assert extract_jurisdiction(text) == expected


@pytest.mark.parametrize(("text", "levels"), [
    ("A7县某村道路破损严重", {"county", "township"}),
    ("枫山村村民小组的账目不公开", {"township"}),
    ("我们社区的活动中心一直关门", {"township"}),
    ("A市金帆路停车场收费太高", {"city"}),
    ("小区门口的超市占道经营", set()),
])
def test_names_level(text, levels):
    from xinfang.models.jurisdiction import names_level

    assert names_level(text) == levels


def test_duty_list_level_is_evidence_and_checked(tmp_path):
    from xinfang.errors import DataError
    from xinfang.models.duty_list import DutyList

    duty = DutyList.parse("- department: 街道乡镇\n  level: township\n- department: 公安\n  keywords: [派出所]\n")
    assert duty.level_hits("枫山村村委会不公开账目") == {"街道乡镇": 1.0}
    assert duty.level_hits("A市金帆路停车场收费太高") == {}
    p = tmp_path / "d.yaml"
    p.write_text("- department: 公安\n  keywords: [派出所]\n- department: 街道乡镇\n  level: village\n",
                 encoding="utf-8")
    with pytest.raises(DataError, match=r"line 4 \(街道乡镇\): key 'level' must be one of city, county, township"):
        DutyList.load(p)


@pytest.mark.parametrize(("text", "expected"), [
    ("在规划限制区内建房", None), ("星沙经开区的企业", None), ("希望三区的路灯坏了", None), ("全省地州市都有", None),
    ("利用安置区空地", None), ("感谢泉塘街道", "泉塘街道"), ("配至王坊乡", "王坊乡")])
def test_zones_and_verbs_are_not_places(text, expected):
    assert extract_jurisdiction(text) == expected
