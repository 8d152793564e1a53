"""IFEval's verifiable instruction checkers (Zhou et al. 2023), re-implemented.

Each checker follows the semantics of the reference implementation (google-research
``instruction_following_eval``, also vendored by lm-evaluation-harness), id for id, with two
deliberate differences that keep driftkit free of NLTK data downloads (which are pickles):

- sentences are counted with a regex splitter (the reference's own ``split_into_sentences``
  rules: abbreviations, acronyms, decimals) instead of NLTK's punkt model;
- words are ``\\w+`` runs (what the reference's ``RegexpTokenizer(r"\\w+")`` does) and capital
  words are whitespace/punctuation-separated tokens that are all upper case.

Language detection uses ``langdetect`` with ``DetectorFactory.seed = 0`` so results are
deterministic across runs (langdetect is randomised otherwise).
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable
from typing import Any

LESS, AT_LEAST = "less than", "at least"


def _compare(count: int, relation: str, target: int) -> bool:
    if relation == LESS:
        return count < target
    if relation == AT_LEAST:
        return count >= target
    raise ValueError(f"unknown relation {relation!r}")


# ---------------------------------------------------------------- text utilities
_ALPHA = r"([A-Za-z])"
_PREFIXES = r"(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = r"(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = r"([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = r"[.](com|net|org|io|gov|edu|me)"
_DIGITS = r"([0-9])"
_MULTI_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter (the reference implementation's rules)."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTI_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHA + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHA + "[.]" + _ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHA + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return [s for s in sentences if s]


def count_sentences(text: str) -> int:
    return len(split_into_sentences(text))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text``'s language (deterministic), or None when undetectable."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random; a fixed seed makes it repeatable
    try:
        return detect(text)
    except LangDetectException:
        return None


# ---------------------------------------------------------------- checkers: (response, **kwargs) -> bool
def keywords_existence(value: str, keywords: list[str], **_: Any) -> bool:
    return all(re.search(re.escape(k), value, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(value: str, keyword: str, frequency: int, relation: str, **_: Any) -> bool:
    return _compare(len(re.findall(re.escape(keyword), value, flags=re.IGNORECASE)), relation, frequency)


def keywords_forbidden_words(value: str, forbidden_words: list[str], **_: Any) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", value, flags=re.IGNORECASE) for w in forbidden_words)


def keywords_letter_frequency(value: str, letter: str, let_frequency: int, let_relation: str, **_: Any) -> bool:
    return _compare(collections.Counter(value.lower())[letter.lower()], let_relation, let_frequency)


def language_response_language(value: str, language: str, **_: Any) -> bool:
    got = detect_language(value)
    return True if got is None else got == language  # the reference counts undetectable text as passing


def length_number_sentences(value: str, num_sentences: int, relation: str, **_: Any) -> bool:
    return _compare(count_sentences(value), relation, num_sentences)


def length_number_paragraphs(value: str, num_paragraphs: int, **_: Any) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    n = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i == 0 or i == len(paragraphs) - 1:
                n -= 1
            else:
                return False
    return n == num_paragraphs


def length_number_words(value: str, num_words: int, relation: str, **_: Any) -> bool:
    return _compare(count_words(value), relation, num_words)


def length_nth_paragraph_first_word(
    value: str, num_paragraphs: int, nth_paragraph: int, first_word: str, **_: Any
) -> bool:
    paragraphs = re.split(r"\n\n", value)
    n = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > len(paragraphs):
        return False
    para = paragraphs[nth_paragraph - 1].strip()
    if not para:
        return False
    word = para.split()[0].strip().lstrip("'").lstrip('"')
    got = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        got += ch.lower()
    return n == num_paragraphs and got == first_word.lower()


def content_number_placeholders(value: str, num_placeholders: int, **_: Any) -> bool:
    return len(re.findall(r"\[.*?\]", value)) >= num_placeholders


def content_postscript(value: str, postscript_marker: str, **_: Any) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, value.lower(), flags=re.MULTILINE))


def format_number_bullet_lists(value: str, num_bullets: int, **_: Any) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def format_constrained_response(value: str, **_: Any) -> bool:
    v = value.strip()
    return any(o in v for o in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def format_number_highlighted_sections(value: str, num_highlights: int, **_: Any) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
    return n >= num_highlights


def format_multiple_sections(value: str, section_spliter: str, num_sections: int, **_: Any) -> bool:
    sections = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", value)
    return len(sections) - 1 >= num_sections


def format_json_format(value: str, **_: Any) -> bool:
    v = value.strip()
    for pre in ("```json", "```Json", "```JSON", "```"):
        v = v.removeprefix(pre)
    v = v.removesuffix("```").strip()
    try:
        json.loads(v)
    except ValueError:
        return False
    return True


def format_title(value: str, **_: Any) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


def combination_two_responses(value: str, **_: Any) -> bool:
    parts = value.split("******")
    valid = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i != 0 and i != len(parts) - 1:
                return False
        else:
            valid.append(p)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def combination_repeat_prompt(value: str, prompt_to_repeat: str, **_: Any) -> bool:
    return value.strip().lower().startswith(prompt_to_repeat.strip().lower())


def startend_end_checker(value: str, end_phrase: str, **_: Any) -> bool:
    return value.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def startend_quotation(value: str, **_: Any) -> bool:
    v = value.strip()
    return len(v) > 1 and v[0] == '"' and v[-1] == '"'


def case_capital_word_frequency(value: str, capital_frequency: int, capital_relation: str, **_: Any) -> bool:
    words = re.findall(r"[^\s.,;:!?()\[\]{}\"]+", value)
    return _compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def case_english_capital(value: str, **_: Any) -> bool:
    lang = detect_language(value)
    return value.isupper() and (lang is None or lang == "en")


def case_english_lowercase(value: str, **_: Any) -> bool:
    lang = detect_language(value)
    return value.islower() and (lang is None or lang == "en")


def punctuation_no_comma(value: str, **_: Any) -> bool:
    return "," not in value


CHECKERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": length_number_sentences,
    "length_constraints:number_paragraphs": length_number_paragraphs,
    "length_constraints:number_words": length_number_words,
    "length_constraints:nth_paragraph_first_word": length_nth_paragraph_first_word,
    "detectable_content:number_placeholders": content_number_placeholders,
    "detectable_content:postscript": content_postscript,
    "detectable_format:number_bullet_lists": format_number_bullet_lists,
    "detectable_format:constrained_response": format_constrained_response,
    "detectable_format:number_highlighted_sections": format_number_highlighted_sections,
    "detectable_format:multiple_sections": format_multiple_sections,
    "detectable_format:json_format": format_json_format,
    "detectable_format:title": format_title,
    "combination:two_responses": combination_two_responses,
    "combination:repeat_prompt": combination_repeat_prompt,
    "startend:end_checker": startend_end_checker,
    "startend:quotation": startend_quotation,
    "change_case:capital_word_frequency": case_capital_word_frequency,
    "change_case:english_capital": case_english_capital,
    "change_case:english_lowercase": case_english_lowercase,
    "punctuation:no_comma": punctuation_no_comma,
}


def loose_variants(response: str) -> list[str]:
    """The loose criterion's response variants: without the first line, the last line, both, each
    also with ``*`` removed (markdown emphasis), plus the response itself."""
    lines = response.split("\n")
    first_removed = "\n".join(lines[1:]).strip()
    last_removed = "\n".join(lines[:-1]).strip()
    both_removed = "\n".join(lines[1:-1]).strip()
    base = [response, first_removed, last_removed, both_removed]
    return base + [v.replace("*", "") for v in base]


def check(instruction_id: str, response: str, kwargs: dict[str, Any], loose: bool = False) -> bool:
    """Whether ``response`` follows one instruction (strict, or loose: any non-empty variant)."""
    fn = CHECKERS[instruction_id]
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    if not loose:
        return bool(response.strip()) and fn(response, **args)
    return any(v.strip() and fn(v, **args) for v in loose_variants(response))
