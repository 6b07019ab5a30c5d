"""Reading an upload for bulk enrollment: encodings, header names, bad files; and a job
run through the service (no web): rows registered, duplicates and invalid rows kept."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from govpki.errors import InvalidError, NotFoundError
from ra.import_models import ImportJob, ImportRow
from ra.imports import parse_csv
from tests.ra.conftest import CLERK, OTHER_CLERK
from tests.ra.idnumbers import id_number, wrong_check
from web.container import Services

TEXT = "姓名,身份证号,部门,电话\n张三,{n},财政局,0991-1234567\n\n李四 , {m} ,审计局,\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_utf8_with_or_without_bom_and_gb18030_are_read(encoding: str) -> None:
    parsed = parse_csv(TEXT.format(n="1", m="2").encode(encoding))
    assert parsed.encoding == ("gb18030" if encoding == "gb18030" else "utf-8")
    assert [(r.line, r.values) for r in parsed.rows] == [
        (2, {"name": "张三", "id_number": "1", "department": "财政局", "phone": "0991-1234567"}),
        (4, {"name": "李四", "id_number": "2", "department": "审计局", "phone": ""}),
    ]


def test_english_header_names_in_any_case_and_order() -> None:
    parsed = parse_csv(b" Department ,NAME,Id_Number,E-mail\nx,y,z,a@b.cn\n")
    assert parsed.rows[0].values == {"department": "x", "name": "y", "id_number": "z", "email": "a@b.cn"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "ra.import_empty"),
        ("姓名,部门\n张三,财政局\n".encode(), "ra.import_missing_column"),
        (b"name,id_number,department\n\xff\xfe\x80\n", "ra.import_encoding"),
        (b"name,id_number,department\n", "ra.import_no_rows"),
        (b"name,id_number,department\nx\x00,y,z\n", "ra.import_not_text"),
    ],
)
def test_bad_files_are_refused_naming_the_file(data: bytes, code: str) -> None:
    with pytest.raises(InvalidError) as caught:
        parse_csv(data)
    assert caught.value.code == code and caught.value.field == "file"


def test_a_job_registers_valid_rows_and_keeps_the_others_without_clear_numbers(ra: Services) -> None:
    good, dup = id_number(sequence="301"), id_number(sequence="303")
    bad = wrong_check(id_number(sequence="305"))
    data = f"name,id_number,department\n甲,{good},局\n乙,{dup},局\n丙,{dup},局\n丁,{bad},局\n".encode()
    with ra.sessions() as db:
        job_id = ra.ra_imports.create(db, CLERK, "../../a.csv", data).id
        db.commit()
    ra.ra_imports.run(ra.sessions, CLERK, job_id)
    ra.ra_imports.run(ra.sessions, CLERK, job_id)  # claimed already: nothing happens twice
    with ra.sessions() as db:
        job = db.get_one(ImportJob, job_id)
        assert (job.state, job.filename, job.registered, job.duplicates, job.invalid) == ("done", "a.csv", 2, 1, 1)
        assert job.payload_sealed is None
        rows = ra.ra_imports.rows_not_registered(db, CLERK, job_id)
        assert [(r.line, r.status, r.field) for r in rows] == [
            (4, "duplicate", "id_number"),
            (5, "invalid", "id_number"),
        ]
        assert all(r.id_number.count("*") == 10 for r in rows)
        assert not db.scalars(select(ImportRow).where(ImportRow.id_number.in_([good, dup, bad]))).first()
        with pytest.raises(NotFoundError, match="no import"):
            ra.ra_imports.get(db, OTHER_CLERK, job_id)
