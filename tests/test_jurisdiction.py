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
