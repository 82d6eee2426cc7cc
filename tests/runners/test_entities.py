"""Entity extraction, text extraction and chunking on their own (pure functions, no servers)."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pytest

from regtask.gateway_api import ResolvedInput
from regtask.runner_contract import ExitCode
from regtask.tasktypes import TASK_TYPES
from regtask_runners.catalog import cataloged, lookup
from regtask_runners.document_analysis import analyse
from regtask_runners.entities import (
    count_sentences,
    detect_language,
    extract_entities,
    find_amounts,
    find_dates,
    find_ibans,
    find_organisations,
    iban_checksum_ok,
    key_phrases,
)
from regtask_runners.errors import PermanentError
from regtask_runners.framework import RunnerEnv, main
from regtask_runners.textextract import extract_text
from regtask_runners.vector_computation import chunk_text
from tests.data.make_test_documents import generate

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _file_input(name: str, content_type: str) -> ResolvedInput:
    raw = (DATA / name).read_bytes()
    return ResolvedInput(
        name=name,
        content_type=content_type,
        value=base64.b64encode(raw).decode(),
        encoding="base64",
    )


@pytest.mark.parametrize(
    ("text", "value", "currency"),
    [
        ("Total : 1 234,56 € TTC", "1234.56", "EUR"),
        ("Total: EUR 1,234.56 due", "1234.56", "EUR"),
        ("only $99.00 today", "99.00", "USD"),
        ("Betrag 1.234,56 EUR netto", "1234.56", "EUR"),
        ("prix 12 € seulement", "12.00", "EUR"),
        ("GBP 4,020.75 paid", "4020.75", "GBP"),
        ("Total TTC 1\u202f250,00\u00a0EUR", "1250.00", "EUR"),
    ],
)
def test_amounts_in_several_formats(text: str, value: str, currency: str) -> None:
    (amount,) = find_amounts(text)
    assert (amount["value"], amount["currency"]) == (value, currency)


def test_numbers_without_currency_are_not_amounts() -> None:
    assert find_amounts("SIREN 552 100 554, phone 01 42 68 53 00, year 2025") == []


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("le 24/09/2025", "2025-09-24"),
        ("on 2025-09-24", "2025-09-24"),
        ("am 24.09.2025", "2025-09-24"),
        ("due 09/24/2025", "2025-09-24"),  # 24 cannot be a month: month first
        ("le 24 septembre 2025", "2025-09-24"),
        ("on September 24, 2025", "2025-09-24"),
        ("am 24. September 2025", "2025-09-24"),
        ("el 24 de septiembre de 2025", "2025-09-24"),
        ("le 1er mars 2025", "2025-03-01"),
    ],
)
def test_dates_in_several_formats(text: str, iso: str) -> None:
    assert [d["iso"] for d in find_dates(text)] == [iso]


def test_impossible_dates_are_dropped() -> None:
    assert find_dates("31/02/2025 and 2025-13-01") == []


def test_iban_checksum_is_verified() -> None:
    assert iban_checksum_ok("FR7630006000011234567890189")
    assert iban_checksum_ok("DE89370400440532013000")
    assert not iban_checksum_ok("FR7630006000011234567890188")  # one digit off
    text = (
        "IBAN : FR76 3000 6000 0112 3456 7890 189 BIC AGRIFRPP\n"
        "wrong: FR76 3000 6000 0112 3456 7890 188\n"
        "compact DE89370400440532013000."
    )
    found = find_ibans(text)
    assert [i["iban"] for i in found] == ["FR7630006000011234567890189", "DE89370400440532013000"]
    assert found[0]["text"] == "FR76 3000 6000 0112 3456 7890 189"


def test_emails_phones_and_organisations() -> None:
    text = (
        "Contact: jane.doe+billing@acme-industries.fr or +33 1 42 68 53 00, 01 42 68 53 01, "
        "(415) 555-0100.\nClient : Globex Corporation Inc and Stark Industries GmbH; "
        "supplier ACME Industries SAS."
    )
    entities = extract_entities(text).as_dict()
    assert [e["email"] for e in entities["emails"]] == ["jane.doe+billing@acme-industries.fr"]
    assert [p["number"] for p in entities["phones"]] == [
        "+33142685300",
        "0142685301",
        "4155550100",
    ]
    assert [o["text"] for o in find_organisations(text)] == [
        "Globex Corporation Inc",
        "Stark Industries GmbH",
        "ACME Industries SAS",
    ]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Le paiement doit être effectué avant la date de la facture.", "fr"),
        ("The payment must be made before the date of the invoice.", "en"),
        ("Die Zahlung ist vor dem Datum der Rechnung zu leisten und wir danken.", "de"),
        ("El pago se debe realizar antes de la fecha de la factura.", "es"),
    ],
)
def test_language_by_stopwords(text: str, code: str) -> None:
    assert detect_language(text)["code"] == code


def test_key_phrases_and_counts() -> None:
    text = (
        "The warehouse automation pilot is funded. The board approved the warehouse "
        "automation pilot! Is the budget approved? Yes."
    )
    phrases = [p["phrase"] for p in key_phrases(text)]
    assert phrases[0] == "warehouse automation pilot"
    assert count_sentences(text) == 4


@pytest.mark.parametrize(("name", "content_type"), [("invoice.pdf", PDF), ("invoice.docx", DOCX)])
def test_invoice_entities_from_pdf_and_docx(name: str, content_type: str) -> None:
    result = analyse(extract_text(_file_input(name, content_type)))
    entities = result["entities"]
    totals = {(a["value"], a["currency"]) for a in entities["amounts"]}
    assert ("1250.00", "EUR") in totals
    assert ("800.00", "EUR") in totals  # the quantity column is not read as thousands
    assert ("1800.00", "EUR") not in totals
    assert "2025-09-24" in [d["iso"] for d in entities["dates"]]
    assert [i["iban"] for i in entities["ibans"]] == ["FR7630006000011234567890189"]
    assert [e["email"] for e in entities["emails"]] == ["facturation@acme-industries.fr"]
    assert [p["number"] for p in entities["phones"]] == ["+33142685300"]
    assert "ACME Industries SAS" in [o["text"] for o in entities["organisations"]]
    assert result["language"]["code"] == "fr"
    assert result["entities_found"] >= 10


def test_multipage_report_counts_and_entities() -> None:
    pdf = analyse(extract_text(_file_input("report.pdf", PDF)))
    markdown = analyse(
        extract_text(
            ResolvedInput(
                name="report.md",
                content_type="text/markdown",
                value=(DATA / "report.md").read_text(),
            )
        )
    )
    assert pdf["counts"]["pages"] == 3 and not pdf["counts"]["pages_estimated"]
    assert markdown["counts"]["pages"] == 3 and markdown["counts"]["pages_estimated"]
    for result in (pdf, markdown):
        assert result["counts"]["words"] > 1000
        assert result["counts"]["sentences"] > 40
        assert result["language"]["code"] == "en"
        assert {o["text"] for o in result["entities"]["organisations"]} == {
            "Initech LLC",
            "Umbrella Corp",
            "Stark Industries GmbH",
            "Wayne Enterprises Inc",
        }
        assert {"12480.00", "1234.56", "99.00", "4020.75"} <= {
            a["value"] for a in result["entities"]["amounts"]
        }
        assert len(result["entities"]["emails"]) == 5
    assert (
        "#"
        not in extract_text(
            ResolvedInput(name="r.md", content_type="text/markdown", value="# Title\n**bold** text")
        ).text
    )


def test_unreadable_documents_are_permanent_errors() -> None:
    garbage = ResolvedInput(
        name="broken.pdf",
        content_type=PDF,
        value=base64.b64encode(b"%PDF-1.4 not really").decode(),
        encoding="base64",
    )
    with pytest.raises(PermanentError):
        extract_text(garbage)
    with pytest.raises(PermanentError):
        extract_text(ResolvedInput(name="x", value="!!!", encoding="base64"))


def test_chunks_overlap_and_cover_the_text() -> None:
    text = " ".join(f"word{i}" for i in range(400))
    chunks = chunk_text(text, 200, 40)
    assert all(len(c) <= 200 for c in chunks)
    assert all(not c.startswith(" ") and not c.endswith(" ") for c in chunks)
    assert chunks[0].split()[0] == "word0" and chunks[-1].split()[-1] == "word399"
    for previous, current in itertools.pairwise(chunks):
        assert current.split()[0] in previous.split()  # overlapping windows
    covered = {w for c in chunks for w in c.split()}
    assert covered == set(text.split())
    with pytest.raises(PermanentError):
        chunk_text(text, 100, 100)


def test_every_task_type_has_a_runner() -> None:
    assert cataloged() == set(TASK_TYPES)
    for task_type in TASK_TYPES:
        assert callable(lookup(task_type.value))
    with pytest.raises(PermanentError):
        lookup("mining_bitcoin")


def test_missing_environment_is_a_permanent_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PermanentError, match="REGTASK_TASK_TOKEN"):
        RunnerEnv.from_environ({"REGTASK_TASK_ID": "t", "REGTASK_TASK_TYPE": "x"})
    for name in ("REGTASK_TASK_ID", "REGTASK_TASK_TYPE", "REGTASK_GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["document_analysis"]) == ExitCode.PERMANENT
    assert main([]) == ExitCode.PERMANENT


def test_committed_test_documents_match_their_generator(tmp_path: Path) -> None:
    for name, path in generate(tmp_path).items():
        assert path.read_bytes() == (DATA / name).read_bytes(), name
