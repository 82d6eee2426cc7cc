"""Entity extraction from plain text: amounts, dates, emails, IBANs, phones, organisations,
language, key phrases and counts.

Pure functions (no I/O), rule-based: the documents are invoices, contracts and reports in
French, English, German and Spanish, where these formats are regular enough that rules are
precise and, unlike a model, explainable and fast. Every entity carries the exact ``text`` it
was found as, plus a normalised value (ISO date, decimal amount, compact IBAN...).

Long (about 440 lines) for a reason: mostly data (patterns, stopwords and month names in four
languages, IBAN lengths per country) next to the few lines that use each of them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_PER_KIND = 100

# ------------------------------------------------------------------ languages and stopwords


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


STOPWORDS: dict[str, frozenset[str]] = {
    "fr": _wordset(
        "le la les un une des du de d l et est sont en dans pour par sur avec au aux ce cette "
        "ces qui que quoi ne pas plus ou où il elle ils elles nous vous je tu on se sa son "
        "ses leur leurs été être avoir a ont mais comme tout tous sera doit merci votre notre "
        "ci dessous après avant entre"
    ),
    "en": _wordset(
        "the a an and or of to in on for with by at from is are was were be been being this "
        "that these those it its as not but which who will would can could should has have "
        "had our your their they we you he she them than then there into over under about "
        "after before any each more most other some such only also"
    ),
    "de": _wordset(
        "der die das den dem des ein eine einer eines einem und oder ist sind war waren nicht "
        "mit von zu im in auf für bei aus nach über unter auch als wie wir sie er es ich du "
        "ihr sich noch nur werden wird wurde bitte zahlung"
    ),
    "es": _wordset(
        "el la los las un una unos unas y o de del al en por para con sin es son fue ser está "
        "están que no se su sus lo le les como más pero este esta estos estas nuestro nuestra "
        "usted gracias"
    ),
}
ALL_STOPWORDS = frozenset().union(*STOPWORDS.values())

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*", re.UNICODE)
_TOKEN = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def detect_language(text: str) -> dict[str, Any]:
    """The language whose stopwords occur most (fr/en/de/es); ``unknown`` without evidence."""
    tokens = [w.lower() for w in words(text)]
    scores = {lang: sum(1 for t in tokens if t in stop) for lang, stop in STOPWORDS.items()}
    total = sum(scores.values())
    best = max(sorted(scores), key=lambda lang: scores[lang])
    if scores[best] == 0:
        return {"code": "unknown", "confidence": 0.0, "scores": scores}
    return {"code": best, "confidence": round(scores[best] / total, 3), "scores": scores}


# ------------------------------------------------------------------ amounts

_CURRENCIES = {
    "€": "EUR",
    "EUR": "EUR",
    "EUROS": "EUR",
    "$": "USD",
    "US$": "USD",
    "USD": "USD",
    "£": "GBP",
    "GBP": "GBP",
    "CHF": "CHF",
    "¥": "JPY",
    "JPY": "JPY",
    "CAD": "CAD",
}
_CUR = r"(?:US\$|€|\$|£|¥|EUR(?:OS)?|USD|GBP|CHF|JPY|CAD)"
# 1 234,56 / 1.234,56 / 1,234.56 / 1234.56 / 99 — one (narrow/no-break) space as thousands mark.
_NUM = r"\d{1,3}(?:(?:[ \u00a0\u202f]|[.,](?=\d{3}\b))\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_AMOUNT = re.compile(
    rf"(?<![\w.,])(?:(?P<pre>{_CUR})[ \u00a0]?(?P<num1>{_NUM})|(?P<num2>{_NUM})[ \u00a0]?"
    rf"(?P<post>{_CUR}))(?![\w])",
    re.IGNORECASE,
)


def parse_number(raw: str) -> Decimal | None:
    """``1 234,56`` / ``1.234,56`` / ``1,234.56`` -> 1234.56; the last separator followed by
    one or two digits is the decimal mark, every other separator groups thousands."""
    compact = re.sub(r"[ \u00a0\u202f]", "", raw)
    match = re.search(r"[.,](\d{1,2})$", compact)
    if match:
        integer = re.sub(r"[.,]", "", compact[: match.start()])
        text = f"{integer}.{match.group(1)}"
    else:
        text = re.sub(r"[.,]", "", compact)
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def find_amounts(text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for match in _AMOUNT.finditer(text):
        raw_number = match.group("num1") or match.group("num2")
        symbol = (match.group("pre") or match.group("post") or "").upper()
        value = parse_number(raw_number)
        if value is None:
            continue
        found.append(
            {
                "text": match.group(0).strip(),
                "value": f"{value:.2f}",
                "currency": _CURRENCIES.get(symbol, symbol),
                "start": match.start(),
            }
        )
    return found


# ------------------------------------------------------------------ dates

_MONTHS = {
    # en
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7,
    "august": 8, "september": 9, "october": 10, "november": 11, "december": 12,
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
    "sept": 9, "oct": 10, "nov": 11, "dec": 12,
    # fr
    "janvier": 1, "février": 2, "fevrier": 2, "mars": 3, "avril": 4, "mai": 5, "juin": 6,
    "juillet": 7, "août": 8, "aout": 8, "septembre": 9, "octobre": 10, "novembre": 11,
    "décembre": 12, "decembre": 12,
    # de
    "januar": 1, "februar": 2, "märz": 3, "maerz": 3, "juni": 6, "juli": 7,
    "oktober": 10, "dezember": 12,
    # es
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7,
    "agosto": 8, "septiembre": 9, "setiembre": 9, "octubre": 10, "noviembre": 11,
    "diciembre": 12,
}  # fmt: skip
_MONTH_NAMES = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<![\d/.-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d-])"), "ymd"),
    (re.compile(r"(?<![\d/.-])(\d{1,2})([/.-])(\d{1,2})\2(\d{4})(?![\d/.-])"), "dmy_numeric"),
    # 24 septembre 2025 / 24. September 2025 / 24 de septiembre de 2025 / 1er mars 2025
    (
        re.compile(
            rf"\b(\d{{1,2}})(?:er|st|nd|rd|th)?\.?\s+(?:de\s+)?({_MONTH_NAMES})\.?"
            rf"\s+(?:de\s+)?(\d{{4}})\b",
            re.IGNORECASE,
        ),
        "d_month_y",
    ),
    # September 24, 2025 / Sept 24 2025
    (
        re.compile(
            rf"\b({_MONTH_NAMES})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b",
            re.IGNORECASE,
        ),
        "month_d_y",
    ),
]


def _iso(year: int, month: int, day: int) -> str | None:
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def find_dates(text: str) -> list[dict[str, Any]]:
    """Dates as written plus ISO; numeric ``a/b/yyyy`` is day first unless a > 12 fails."""
    found: list[dict[str, Any]] = []
    taken: list[tuple[int, int]] = []
    for pattern, kind in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            if any(s < match.end() and match.start() < e for s, e in taken):
                continue
            groups = match.groups()
            iso: str | None
            if kind == "ymd":
                iso = _iso(int(groups[0]), int(groups[1]), int(groups[2]))
            elif kind == "dmy_numeric":
                first, second, year = int(groups[0]), int(groups[2]), int(groups[3])
                iso = _iso(year, second, first) or _iso(year, first, second)
            elif kind == "d_month_y":
                iso = _iso(int(groups[2]), _MONTHS[groups[1].lower()], int(groups[0]))
            else:
                iso = _iso(int(groups[2]), _MONTHS[groups[0].lower()], int(groups[1]))
            if iso is None:
                continue
            taken.append((match.start(), match.end()))
            found.append({"text": match.group(0), "iso": iso, "start": match.start()})
    return sorted(found, key=lambda d: d["start"])


# ------------------------------------------------------------------ emails, IBANs, phones

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)

# Lengths of the IBAN per country (ISO 13616 registry, the countries our customers use most).
IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
}  # fmt: skip
_IBAN_START = re.compile(r"\b([A-Z]{2})(\d{2})(?=[ ]?[A-Z0-9])")


def iban_checksum_ok(iban: str) -> bool:
    """ISO 7064 mod 97-10: the rearranged number, letters as 10..35, leaves remainder 1."""
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    rearranged = iban[4:] + iban[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def find_ibans(text: str) -> list[dict[str, Any]]:
    """IBANs written compact or in groups of four; only those with a valid checksum."""
    found: list[dict[str, Any]] = []
    for start in _IBAN_START.finditer(text):
        country = start.group(1)
        # Collect up to 34 characters, allowing single spaces between groups, on one line.
        chars: list[str] = []
        ends: list[int] = []
        pos = start.start()
        while pos < len(text) and len(chars) < 34:
            ch = text[pos]
            if ch.isascii() and ch.isalnum() and (ch.isdigit() or ch.isupper()):
                chars.append(ch)
                ends.append(pos + 1)
            elif ch != " " or (pos + 1 < len(text) and text[pos + 1] == " "):
                break
            pos += 1
        lengths = [IBAN_LENGTHS[country]] if country in IBAN_LENGTHS else range(len(chars), 14, -1)
        for length in lengths:
            if length > len(chars):
                continue
            candidate = "".join(chars[:length])
            boundary = ends[length - 1]
            if boundary < len(text) and text[boundary].isalnum():
                continue  # the IBAN would end inside a word
            if iban_checksum_ok(candidate):
                found.append(
                    {
                        "text": text[start.start() : boundary],
                        "iban": candidate,
                        "country": country,
                        "valid": True,
                        "start": start.start(),
                    }
                )
                break
    return found


_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(0\))?(?:[ .-]?\d{1,4}){2,6}"  # +33 1 42 68 53 00 / +49 (0)30 1234567
    r"|0[1-9](?:[ .-]?\d{2}){4}"  # 01 42 68 53 00 (FR national)
    r"|\(\d{3}\)[ ]?\d{3}[ .-]\d{4}"  # (415) 555-0100
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 415-555-0100
    r")(?![\w])"
)


def find_phones(text: str, exclude: list[tuple[int, int]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for match in _PHONE.finditer(text):
        if any(s < match.end() and match.start() < e for s, e in exclude):
            continue
        digits = re.sub(r"\D", "", match.group(0).replace("(0)", ""))
        if not 8 <= len(digits) <= 15:
            continue
        normalised = f"+{digits}" if match.group(0).startswith("+") else digits
        found.append({"text": match.group(0), "number": normalised, "start": match.start()})
    return found


# ------------------------------------------------------------------ organisations

_LEGAL_FORMS = (
    r"S\.A\.S\.|S\.A\.R\.L\.|S\.A\.|SASU|SAS|SARL|EURL|SCI|SNC|SA|GmbH|AG|KG|Inc\.?|Ltd\.?|"
    r"LLC|LLP|Corp\.?|Corporation|PLC|plc|S\.L\.|SL|SRL|S\.p\.A\.|BV|NV|Co\.?"
)
# Between the words of a name: blanks, or one line break (a PDF line, or page, may end
# mid-name; pages are joined with "\n\f\n").
_GAP = r"(?:[ \t]+|[ \t]*\n(?:\f\n)?[ \t]*)"
_ORG = re.compile(
    rf"((?:[A-Z][\w&'\u2019.-]*{_GAP}){{0,4}}?[A-Z][\w&'\u2019.-]*"
    rf"(?:{_GAP}&{_GAP}[A-Z][\w'\u2019.-]*)?)"
    rf"(?:,?{_GAP}|,)((?:{_LEGAL_FORMS})(?:[ \t]+(?:{_LEGAL_FORMS}))?)(?![\w])"
)
_ORG_LEADING_NOISE = _wordset(
    "client fournisseur supplier customer from to de pour par bill invoice facture "
    "rechnung factura an für the le la les el los der die das dear chez at via contract "
    "contrat with avec and et main renewed by"
)


def find_organisations(text: str) -> list[dict[str, Any]]:
    """Capitalised names followed by a legal form (``ACME Industries SAS``, ``Initech LLC``)."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for match in _ORG.finditer(text):
        tokens = match.group(1).split()
        while tokens and tokens[0].lower().strip(":,") in _ORG_LEADING_NOISE:
            tokens.pop(0)
        if not tokens:
            continue
        name = " ".join([*tokens, *match.group(2).split()])
        key = name.lower()
        if key in seen:
            continue
        seen.add(key)
        legal_form = match.group(2).split()[-1]
        found.append({"text": name, "legal_form": legal_form, "start": match.start()})
    return found


# ------------------------------------------------------------------ key phrases and counts


_PHRASE_BREAK = re.compile(r"[.,;:!?()\[\]{}\"\u00ab\u00bb|/\n\t\f\u2014\u2013]+|\s-\s")
MAX_PHRASE_WORDS = 4


def key_phrases(text: str, limit: int = 10) -> list[dict[str, Any]]:
    """RAKE-style: runs of content words between stopwords and punctuation, scored by word
    degree/frequency and repetition; runs longer than four words are not phrases."""
    phrases: list[tuple[str, ...]] = []
    for fragment in _PHRASE_BREAK.split(text):
        current: list[str] = []
        for token in [*(t.lower() for t in _TOKEN.findall(fragment)), ""]:
            if not token or token in ALL_STOPWORDS or token.isdigit() or len(token) < 3:
                if 0 < len(current) <= MAX_PHRASE_WORDS:
                    phrases.append(tuple(current))
                current = []
            else:
                current.append(token)
    frequency: Counter[str] = Counter()
    degree: Counter[str] = Counter()
    for phrase in phrases:
        for word in phrase:
            frequency[word] += 1
            degree[word] += len(phrase)
    counts = Counter(phrases)
    scored = {
        phrase: sum(degree[w] / frequency[w] for w in phrase) * math.log2(1 + counts[phrase])
        for phrase in counts
    }
    ranked = sorted(scored.items(), key=lambda item: (-item[1], item[0]))
    return [
        {"phrase": " ".join(phrase), "score": round(score, 3), "count": counts[phrase]}
        for phrase, score in ranked[:limit]
    ]


_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n\s*\n")


def count_sentences(text: str) -> int:
    return sum(1 for part in _SENTENCE_END.split(text) if _WORD.search(part))


# ------------------------------------------------------------------ everything at once


@dataclass
class Entities:
    amounts: list[dict[str, Any]] = field(default_factory=list)
    dates: list[dict[str, Any]] = field(default_factory=list)
    emails: list[dict[str, Any]] = field(default_factory=list)
    ibans: list[dict[str, Any]] = field(default_factory=list)
    phones: list[dict[str, Any]] = field(default_factory=list)
    organisations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(items) for items in self.as_dict().values())

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Capped per kind, without the internal ``start`` offsets."""
        return {
            kind: [_public(item) for item in items[:MAX_PER_KIND]]
            for kind, items in (
                ("amounts", self.amounts),
                ("dates", self.dates),
                ("emails", self.emails),
                ("ibans", self.ibans),
                ("phones", self.phones),
                ("organisations", self.organisations),
            )
        }


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """Without the internal offset; the text as one line (a PDF may break a date in two)."""
    out = {k: v for k, v in item.items() if k != "start"}
    out["text"] = " ".join(str(out["text"]).split())
    return out


def extract_entities(text: str) -> Entities:
    emails = [
        {"text": m.group(0), "email": m.group(0).lower(), "start": m.start()}
        for m in _EMAIL.finditer(text)
    ]
    ibans = find_ibans(text)
    dates = find_dates(text)
    amounts = find_amounts(text)
    taken = [(i["start"], i["start"] + len(i["text"])) for i in ibans]
    taken += [(d["start"], d["start"] + len(d["text"])) for d in dates]
    taken += [(a["start"], a["start"] + len(a["text"])) for a in amounts]
    return Entities(
        amounts=amounts,
        dates=dates,
        emails=emails,
        ibans=ibans,
        phones=find_phones(text, taken),
        organisations=find_organisations(text),
    )
