"""Generate the documents the runner tests analyse (run: python -m tests.data.make_test_documents).

The output is deterministic (fixed PDF creation date, fixed DOCX core properties and zip
timestamps), so regenerating gives byte-identical files and the committed copies never drift:
``tests/runners/test_test_documents.py`` regenerates them into a temp dir and compares bytes.

- ``invoice.pdf`` / ``invoice.docx``: one French invoice from "ACME Industries SAS" (total
  "1 250,00 EUR", dated 24/09/2025, a valid IBAN, an email, a phone number), as a PDF with a
  text layer and as a Word document (the line items in a table).
- ``report.md`` / ``report.pdf``: an English quarterly report, several sections and well over
  two pages, with amounts, dates, organisations and emails in English formats.
"""

from __future__ import annotations

import io
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import docx
from fpdf import FPDF

HERE = Path(__file__).resolve().parent
FIXED_TIME = datetime(2025, 9, 24, 10, 30, 0, tzinfo=UTC)

INVOICE_IBAN = "FR76 3000 6000 0112 3456 7890 189"
INVOICE_HEADER = [
    "ACME Industries SAS",
    "12 rue de la Paix, 75002 Paris, France",
    "Email : facturation@acme-industries.fr - Tél : +33 1 42 68 53 00",
    "SIREN 552 100 554 - TVA FR40 552100554",
]
INVOICE_META = [
    "FACTURE N° F-2025-0917",
    "Date de facture : 24/09/2025",
    "Date d'échéance : 24 octobre 2025",
    "Client : Globex Corporation Inc, 500 Market Street, San Francisco",
]
INVOICE_LINES = [
    ("Maintenance annuelle des équipements", "1", "800,00 EUR"),
    ("Intervention sur site (forfait)", "1", "241,67 EUR"),
]
INVOICE_TOTALS = [
    ("Total HT", "1 041,67 EUR"),
    ("TVA 20 %", "208,33 EUR"),
    ("Total TTC", "1 250,00 EUR"),
]
INVOICE_FOOTER = [
    "Conditions de paiement : merci de régler la facture avant la date d'échéance. Le "
    "paiement doit être effectué par virement sur le compte indiqué ci-dessous. En cas de "
    "retard, une pénalité de trois fois le taux d'intérêt légal sera appliquée.",
    f"IBAN : {INVOICE_IBAN}",
    "BIC : AGRIFRPP",
    "Pour toute question, contactez notre service client par email ou par téléphone.",
]

REPORT_TITLE = "Quarterly Operations Report - Northwind Logistics"
REPORT_INTRO = [
    "This report summarises the operations of the third quarter for the board. It covers "
    "the warehouse network, the transport fleet, customer service and the finance team. "
    "Each section lists the main figures, the incidents of the quarter and the actions "
    "planned for the next one. The quarter closed on September 30, 2025 and the figures "
    "below were validated by the finance team on 2025-10-06.",
    "Overall, shipped volumes grew by eleven percent compared with the same quarter of the "
    "previous year. The warehouse network handled the seasonal peak without overtime beyond "
    "the budget, and the transport fleet kept its on-time delivery rate above the target. "
    "Customer satisfaction improved in every region, although response times on the support "
    "line remain too long during the Monday morning peak.",
]
REGIONS = [
    ("North", "Initech LLC", "ops.north@northwind.example", "$12,480.00", "July 14, 2025"),
    ("South", "Umbrella Corp", "ops.south@northwind.example", "EUR 1,234.56", "August 2, 2025"),
    ("East", "Stark Industries GmbH", "ops.east@northwind.example", "$99.00", "03/09/2025"),
    ("West", "Wayne Enterprises Inc", "ops.west@northwind.example", "£4,020.75", "2025-09-18"),
]
REGION_TEXT = [
    "The {region} region shipped its volumes through two warehouses and one cross-dock "
    "platform. The warehouse managers reported stable staffing levels and a lower rate of "
    "picking errors than in the previous quarter. The main customer of the region, "
    "{customer}, renewed its contract for two more years after a review of the service "
    "levels. The regional team can be reached at {email} for any question on these figures.",
    "Transport costs in the {region} region were contained thanks to better route planning. "
    "The fleet manager negotiated new fuel prices and replaced four older trucks with "
    "electric vans for the urban deliveries. One exceptional invoice of {amount} was paid "
    "on {date} for the repair of a loading dock damaged during a storm; the insurance "
    "claim is still open and the amount should be recovered next quarter.",
    "Customer service in the {region} region answered most requests within one working "
    "day. The team introduced a shared knowledge base, which reduced the number of "
    "escalations to the warehouse managers. The next quarter will focus on the training of "
    "new agents, on the automation of delivery notifications and on the reduction of "
    "returned parcels, which still cost the region a significant share of its margin.",
]
REPORT_OUTRO = [
    "The finance team expects the fourth quarter to be the busiest of the year. The budget "
    "for temporary staff was increased accordingly, and the purchasing team has already "
    "secured additional transport capacity with two partner carriers. Investments in "
    "warehouse automation will continue, with a first pilot of autonomous forklifts planned "
    "in the North region before the end of the year.",
    "The board is asked to approve the revised budget and the automation pilot. Questions "
    "about this report can be sent to board.secretary@northwind.example before the meeting.",
]


def report_markdown() -> str:
    parts = [f"# {REPORT_TITLE}", "", "## Summary", ""]
    for paragraph in REPORT_INTRO:
        parts += [paragraph, ""]
    for region, customer, email, amount, date in REGIONS:
        parts += [f"## {region} region", ""]
        for template in REGION_TEXT:
            text = template.format(
                region=region, customer=customer, email=email, amount=amount, date=date
            )
            parts += [text, ""]
    parts += ["## Outlook", ""]
    for paragraph in REPORT_OUTRO:
        parts += [paragraph, ""]
    return "\n".join(parts).rstrip() + "\n"


def _pdf() -> FPDF:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_TIME)
    pdf.set_producer("regtask test documents")
    pdf.set_creator("tests/data/make_test_documents.py")
    pdf.set_auto_page_break(auto=True, margin=20)
    pdf.set_margins(20, 20, 20)
    return pdf


def invoice_pdf() -> bytes:
    pdf = _pdf()
    pdf.set_title("Facture F-2025-0917")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 9, INVOICE_HEADER[0], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    for line in INVOICE_HEADER[1:]:
        pdf.cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font("Helvetica", "B", 13)
    pdf.cell(0, 8, INVOICE_META[0], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    for line in INVOICE_META[1:]:
        pdf.cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 10)
    widths = (110, 20, 40)
    for width, title in zip(widths, ("Désignation", "Qté", "Montant"), strict=True):
        pdf.cell(width, 7, title, border=1)
    pdf.ln()
    pdf.set_font("Helvetica", "", 10)
    for row in INVOICE_LINES:
        for width, value in zip(widths, row, strict=True):
            pdf.cell(width, 7, value, border=1)
        pdf.ln()
    pdf.ln(3)
    for label, value in INVOICE_TOTALS:
        pdf.cell(130, 6, label, align="R")
        pdf.cell(40, 6, value, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    for paragraph in INVOICE_FOOTER:
        pdf.multi_cell(0, 5, paragraph, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
    return bytes(pdf.output())


def report_pdf() -> bytes:
    pdf = _pdf()
    pdf.set_title(REPORT_TITLE)
    pdf.add_page()
    for line in report_markdown().splitlines():
        if line.startswith("# "):
            pdf.set_font("Helvetica", "B", 16)
            pdf.multi_cell(0, 9, line[2:], new_x="LMARGIN", new_y="NEXT")
        elif line.startswith("## "):
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 8, line[3:], new_x="LMARGIN", new_y="NEXT")
        elif line:
            pdf.set_font("Helvetica", "", 12)
            pdf.multi_cell(0, 7, line.replace("£", "GBP "), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    return bytes(pdf.output())


def invoice_docx() -> bytes:
    document = docx.Document()
    props = document.core_properties
    props.author = "ACME Industries SAS"
    props.title = "Facture F-2025-0917"
    props.created = FIXED_TIME.replace(tzinfo=None)
    props.modified = FIXED_TIME.replace(tzinfo=None)
    props.last_printed = FIXED_TIME.replace(tzinfo=None)
    props.revision = 1
    document.add_heading(INVOICE_HEADER[0], level=1)
    for line in INVOICE_HEADER[1:]:
        document.add_paragraph(line)
    document.add_heading(INVOICE_META[0], level=2)
    for line in INVOICE_META[1:]:
        document.add_paragraph(line)
    table = document.add_table(rows=1, cols=3)
    for cell, title in zip(table.rows[0].cells, ("Désignation", "Qté", "Montant"), strict=True):
        cell.text = title
    for row in INVOICE_LINES:
        cells = table.add_row().cells
        for cell, value in zip(cells, row, strict=True):
            cell.text = value
    for label, value in INVOICE_TOTALS:
        document.add_paragraph(f"{label} : {value}")
    for paragraph in INVOICE_FOOTER:
        document.add_paragraph(paragraph)
    raw = io.BytesIO()
    document.save(raw)
    return _normalise_zip(raw.getvalue())


def _normalise_zip(data: bytes) -> bytes:
    """Rewrite the DOCX zip with fixed timestamps and attributes (python-docx uses 'now')."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_TIME.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            target.writestr(fixed, source.read(info.filename))
    return out.getvalue()


def generate(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    outputs = {
        "invoice.pdf": invoice_pdf(),
        "invoice.docx": invoice_docx(),
        "report.md": report_markdown().encode(),
        "report.pdf": report_pdf(),
    }
    paths: dict[str, Path] = {}
    for name, content in outputs.items():
        path = directory / name
        path.write_bytes(content)
        paths[name] = path
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for written in generate(target).values():
        sys.stdout.write(f"{written}\n")
