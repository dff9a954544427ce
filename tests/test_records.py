"""load_records / write_jsonl: formats, column mapping, encodings and every error message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import openpyxl
import pytest

from xinfang.errors import DataError
from xinfang.records import load_records, read_text, write_jsonl

ROWS = [
    {"id": "a1", "title": "路灯不亮", "text": "桂花小区东门路灯坏了两个月。", "topic": "城乡建设", "likes": 3},
    {"id": "a2", "title": "工资拖欠", "text": "青山市某公司拖欠工资半年。", "topic": "劳动和社会保障", "likes": 0},
    {"id": "a3", "title": "只有标题的留言", "text": None, "topic": "交通运输", "likes": None},
]
CN_HEADER = ["留言编号", "留言用户", "留言主题", "留言时间", "留言详情", "一级标签"]
CN_ROWS = [
    ["1001", "U001", "噪音扰民", "2024-03-05 09:12:00", "临江区工地夜间施工。", "环境保护"],
    ["1002", "", "公交改线", "2024-03-06 10:00:00", "12路公交改线后不便。", "交通运输"],
]


def write_csv(path: Path, header: list[str], rows: list[list[object]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header)
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def strip_row(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_row"} for r in records]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sub" / "p.jsonl", ROWS)
    records = load_records(path)
    assert strip_row(records) == ROWS
    assert [r["_row"] for r in records] == [1, 2, 3]
    again = load_records(write_jsonl(tmp_path / "again.jsonl", records))
    assert again == records
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_jsonl_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "甲"}\n\n{"text": "乙", "extra": 1.5}\n', encoding="utf-8")
    records = load_records(path)
    assert [(r["id"], r["_row"], r["text"]) for r in records] == [("1", 1, "甲"), ("3", 3, "乙")]
    assert records[1]["extra"] == 1.5 and records[0]["title"] is None


def test_csv_round_trip_and_empty_cells(tmp_path: Path) -> None:
    header = ["id", "title", "text", "topic", "likes"]
    rows = [[r["id"], r["title"], r["text"] or "", r["topic"], "" if r["likes"] is None else r["likes"]] for r in ROWS]
    records = load_records(write_csv(tmp_path / "p.csv", header, rows))
    assert [r["id"] for r in records] == ["a1", "a2", "a3"]
    assert records[2]["text"] is None and records[2]["likes"] is None
    assert records[0]["likes"] == "3"  # CSV values stay strings
    assert [r["_row"] for r in records] == [1, 2, 3]


def test_csv_utf8_bom(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bom.csv", CN_HEADER, CN_ROWS, encoding="utf-8-sig")
    assert read_text(path)[1] == "utf-8"
    records = load_records(path)
    assert records[0]["id"] == "1001" and records[0]["title"] == "噪音扰民"


def test_xlsx_round_trip_keeps_numbers(tmp_path: Path) -> None:
    header = ["id", "title", "text", "topic", "likes"]
    rows = [[r["id"], r["title"], r["text"], r["topic"], r["likes"]] for r in ROWS]
    records = load_records(write_xlsx(tmp_path / "p.xlsx", header, rows))
    assert strip_row(records) == ROWS
    assert isinstance(records[0]["likes"], int)


def test_xlsx_numeric_ids_and_dates(tmp_path: Path) -> None:
    import datetime as dt

    rows = [[188006, "标题一", "内容一", dt.datetime(2024, 3, 5, 9, 12)], [188007, "标题二", "内容二", None]]
    records = load_records(write_xlsx(tmp_path / "n.xlsx", ["留言编号", "留言主题", "留言详情", "留言时间"], rows))
    assert [r["id"] for r in records] == ["188006", "188007"]
    assert records[0]["time"] == "2024-03-05 09:12:00" and records[1]["time"] is None


def test_auto_mapping_of_chinese_headers(tmp_path: Path) -> None:
    records = load_records(write_csv(tmp_path / "cn.csv", CN_HEADER, CN_ROWS))
    first = records[0]
    assert {k: first[k] for k in ("id", "petitioner", "title", "time", "text", "topic")} == {
        "id": "1001", "petitioner": "U001", "title": "噪音扰民", "time": "2024-03-05 09:12:00",
        "text": "临江区工地夜间施工。", "topic": "环境保护",
    }
    assert "留言主题" not in first
    assert records[1]["petitioner"] is None


def test_explicit_mapping(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ["编号", "主题", "详情", "部门"], [["x1", "主题一", "详情一", "公安"]])
    records = load_records(path, columns={"id": "编号", "title": "主题", "text": "详情", "department": "部门"})
    assert strip_row(records) == [{"id": "x1", "title": "主题一", "text": "详情一", "department": "公安"}]
    assert load_records(path, columns={"text": "详情"}, label_column="部门")[0]["部门"] == "公安"


def test_mapping_with_auto_fill_and_shadowed_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", ["text", "留言主题", "正文"], [["旧正文", "主题", "新正文"]])
    (rec,) = load_records(path, columns={"text": "正文"})
    assert rec["text"] == "新正文" and rec["title"] == "主题" and "正文" not in rec


def test_gbk_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gbk.csv", CN_HEADER, CN_ROWS, encoding="gbk")
    assert read_text(path)[1] == "gb18030"
    records = load_records(path)
    assert records[0]["text"] == "临江区工地夜间施工。" and records[1]["topic"] == "交通运输"


def test_title_only_row_is_valid(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "t1", "title": "只有标题", "text": "  "}])
    assert load_records(path)[0]["text"] is None


def test_no_text_allowed_when_not_required(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [{"id": "e1", "title": "", "text": None, "topic": "x"}])
    assert load_records(path, require_text=False)[0]["title"] is None


def test_label_column(tmp_path: Path) -> None:
    records = load_records(write_csv(tmp_path / "cn.csv", CN_HEADER, CN_ROWS), label_column="一级标签")
    assert [r["topic"] for r in records] == ["环境保护", "交通运输"]


# --- errors: each names the file and the row/column ---


def raises(match: str):
    return pytest.raises(DataError, match=match)


def test_error_file_not_found(tmp_path: Path) -> None:
    with raises(r"nope\.jsonl: file not found"):
        load_records(tmp_path / "nope.jsonl")


def test_error_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("x", encoding="utf-8")
    with raises(r"p\.txt: unknown file type '\.txt'"):
        load_records(path)


def test_error_directory_and_bad_xlsx(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").mkdir()
    with raises(r"d\.jsonl: not a file"):
        load_records(tmp_path / "d.jsonl")
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip file")
    with raises(r"bad\.xlsx: cannot read as an Excel"):
        load_records(tmp_path / "bad.xlsx")


def test_error_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "甲"}\n{"text": "乙"\n', encoding="utf-8")
    with raises(r"bad\.jsonl: invalid JSON on line 2"):
        load_records(path)
    path.write_text('{"text": "甲"}\n["乙"]\n', encoding="utf-8")
    with raises(r"bad\.jsonl: line 2 is a JSON list"):
        load_records(path)


def test_error_missing_mapped_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "cn.csv", CN_HEADER, CN_ROWS)
    with raises(r"cn\.csv: column '详情' \(for field 'text'\) not found; available columns: '留言编号'"):
        load_records(path, columns={"text": "详情"})


def test_error_missing_label_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with raises(r"p\.jsonl: label column 'department' not found; available columns: 'id', 'title'"):
        load_records(path, label_column="department")


def test_error_no_title_or_text_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", ["编号", "内容"], [["1", "甲"]])
    with raises(r"x\.csv: no title or text column; available columns: '编号', '内容'"):
        load_records(path)


def test_error_row_without_title_and_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "e.csv", ["id", "title", "text"], [["1", "甲", ""], ["2", " ", "\t"]])
    with raises(r"e\.csv: row 2: no title and no text \(columns 'title', 'text' are empty\)"):
        load_records(path)
    xlsx = write_xlsx(tmp_path / "e.xlsx", CN_HEADER, [CN_ROWS[0], ["1003", "U", None, None, None, "环境保护"]])
    with raises(r"e\.xlsx: row 2: no title and no text \(columns '留言主题', '留言详情'"):
        load_records(xlsx)


def test_error_empty_label(tmp_path: Path) -> None:
    rows = [CN_ROWS[0], ["1003", "U", "标题", "", "详情", ""]]
    path = write_csv(tmp_path / "l.csv", CN_HEADER, rows)
    with raises(r"l\.csv: row 2: empty label \(column '一级标签'\)"):
        load_records(path, label_column="topic")


def test_error_duplicate_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "text": "甲"}, {"id": "y", "text": "乙"}, {"id": "x", "text": "丙"}])
    with raises(r"d\.jsonl: duplicate id 'x' in row 1 and row 3"):
        load_records(path)


def test_error_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    good = "id,title,text\n1,路灯不亮,桂花小区东门路灯坏了两个月，晚上很黑。\n".encode()
    path.write_bytes(good + b"2,\xff\xfe,abc\n")
    with raises(rf"broken\.csv: invalid UTF-8 at byte {len(good) + 2} \(line 3\)"):
        load_records(path)
    path.write_bytes(b"id,text\n1,\x80\x80\xff\n")
    with raises(r"broken\.csv: cannot decode as UTF-8 \(byte 10, line 2\) nor GB18030 \(byte \d+, line 2\)"):
        load_records(path)


def test_error_csv_row_with_too_many_values(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("id,text\n1,甲\n2,乙,多余\n", encoding="utf-8")
    with raises(r"w\.csv: row 2 \(line 3\) has 3 values but the header has 2 columns"):
        load_records(path)


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    assert strip_row(load_records(path)) == ROWS


@pytest.mark.realdata
def test_real_spreadsheet_with_chinese_headers(shared_data_dir: Path) -> None:
    records = load_records(shared_data_dir / "original" / "附件4.xlsx")
    assert len(records) > 1000
    assert all(r["title"] or r["text"] for r in records)
    assert {"id", "title", "text", "petitioner", "time", "_row"} <= set(records[0])
    assert len({r["id"] for r in records}) == len(records)
