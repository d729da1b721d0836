"""Text-tier training data, generated continuously: pages as text, facts with their byte spans.

The text tier is the page's own text (what ingest extracts), so teaching the reader to read it
needs no render: a page here is the text of a synthetic document laid out in lines, as pymupdf
gives it, made in about a millisecond. Nothing is pooled or reused: every training step draws new
pages (a fixed pool was memorised, reading-on-a-cpu.md section 1), and held-out pages come from
held-out value pools (lab.data's split), so an answer is never a string the model has seen.

Every fact knows where its answer lies in the page's bytes (``Fact.start``, ``Fact.end``): the
alignment and copy-path targets of training.
"""

from __future__ import annotations

import html
import random
import re
import textwrap
from dataclasses import dataclass, field

from lab import data as synth

TEXT_DATA_VERSION = 1  # bump when the pages or questions change: part of every stream's seed


@dataclass
class TextFact:
    question: str
    answer: str  # the answer exactly as the page's bytes have it
    start: int  # byte offset of the answer in the page's UTF-8 text
    end: int  # byte offset one past its end


@dataclass
class TextPage:
    text: str
    facts: list[TextFact] = field(default_factory=list)
    kind: str = ""


# --- questions as people ask them: the same fact, worded many ways ------------------------------

_PREFIXES = ["", "", "", "", "Can you tell me ", "Do you know ", "Please tell me ", "Quick one: ",
             "I need to know: ", "According to the documents, ", "From the files, ", "Hi, ",
             "Could you find out ", "Look up: "]  # fmt: skip
_REWRITES = [
    (r"^What is ", ["What's ", "Tell me ", "Find ", "Give me ", "What is "]),
    (r"^Who (\w+) ", ["Who \\1 ", "Which person \\1 ", "Name the person who \\1 "]),
    (r"^When is ", ["When is ", "On what date is ", "What date is "]),
    (r"^How many ", ["How many ", "What number of ", "Number of "]),
    (r"^In which city ", ["In which city ", "Where ", "In what city "]),
    (r"^How much ", ["How much ", "What amount "]),
]


def paraphrase(rng: random.Random, question: str) -> str:
    """One wording of ``question``: rewrites of its opening, a polite prefix, case, punctuation."""
    q = question
    for pattern, options in _REWRITES:
        if re.match(pattern, q) and rng.random() < 0.6:
            q = re.sub(pattern, rng.choice(options), q, count=1)
            break
    prefix = rng.choice(_PREFIXES)
    if prefix and not prefix.endswith(": ") and not prefix.endswith(", "):
        q = q[0].lower() + q[1:]
    elif prefix:
        q = q[0].lower() + q[1:] if rng.random() < 0.5 else q
    q = prefix + q
    r = rng.random()
    if r < 0.15:
        q = q.rstrip("?")
    elif r < 0.25:
        q = q.lower()
    elif r < 0.3:
        q = q.rstrip("?") + "??"
    return q


# --- technical facts: settings, versions, limits, as manuals and specifications state them --------

_TECH_NOUNS = """server client cache queue buffer socket token session request response timeout
retry limit quota worker thread process index table column field record schema backup snapshot
replica cluster node shard partition bucket volume disk memory licence license warranty period
notice section clause version release update patch driver firmware sensor battery display
printer scanner router gateway proxy certificate key password account user group role policy
upload download transfer connection port protocol channel stream frame packet message event
report invoice order payment refund delivery contract agreement term fee rate""".split()
_TECH_ADJ = """default maximum minimum initial standard primary secondary internal external
annual monthly daily current previous recommended required optional total average""".split()
_TECH_TEMPLATES = [
    ("The {adj} {noun} {noun2} is {value}.",
     "What is the {adj} {noun} {noun2}?"),
    ("By default, the {noun} {noun2} is set to {value}.",
     "What is the {noun} {noun2} set to by default?"),
    ("The {noun} uses {noun2} {value}.",
     "Which {noun2} does the {noun} use?"),
    ("{Noun} {noun2}: {value}",
     "What is the {noun} {noun2}?"),
    ("The {adj} {noun} {noun2} must not exceed {value}.",
     "What must the {adj} {noun} {noun2} not exceed?"),
    ("Each {noun} keeps its {noun2} for {value}.",
     "For how long does each {noun} keep its {noun2}?"),
    ("The {noun} {noun2} was changed to {value} in this release.",
     "What was the {noun} {noun2} changed to?"),
]  # fmt: skip
_UNITS = ["seconds", "minutes", "days", "MB", "GB", "ms", "hours"]
_DURATIONS = ["seconds", "minutes", "hours", "days", "weeks", "months", "years"]


def _tech_value(rng: random.Random, v: synth._Values) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"{v.number(1, 65535)}"
    if kind == 1:
        return f"{v.number(1, 500)} {rng.choice(_UNITS)}"
    if kind == 2:
        return f"version {v.number(1, 20)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
    if kind == 3:
        return v.code(rng.choice(["TLS", "SHA", "UTF", "ISO", "RFC", "IEEE"]), rng.randint(2, 4))
    if kind == 4:
        return v.person()
    return v.city()


def _tech_fact(rng: random.Random, v: synth._Values) -> tuple[str, str, str]:
    statement, question = rng.choice(_TECH_TEMPLATES)
    noun, noun2 = rng.sample(_TECH_NOUNS, 2)
    parts = {"adj": rng.choice(_TECH_ADJ), "noun": noun, "noun2": noun2, "Noun": noun.capitalize()}
    if question.startswith("For how long"):  # a duration, not any value ("version 20.28.1")
        value = f"{v.number(1, 500)} {rng.choice(_DURATIONS)}"
    else:
        value = _tech_value(rng, v)
    return statement.format(value=value, **parts), question.format(**parts), value


# --- pages -------------------------------------------------------------------------------------

_BLOCK_END = re.compile(r"</(p|li|h\d|tr|div|table|ul|ol)>|<br\s*/?>")


def _block_text(rng: random.Random, markup: str, width: int) -> str:
    """A block's HTML as extracted page text: one line per row or item, prose wrapped."""
    markup = re.sub(r"</t[dh]>", "  ", markup)
    markup = re.sub(r"<li>", "- " if rng.random() < 0.7 else "• ", markup)
    lines = []
    for part in _BLOCK_END.split(markup):
        if part is None or re.fullmatch(r"p|li|h\d|tr|div|table|ul|ol", part or ""):
            continue
        text = html.unescape(re.sub(r"<[^>]+>", "", part)).strip()
        if text:
            lines.extend(textwrap.wrap(text, width, break_long_words=False) or [text])
    return "\n".join(lines)


def _locate(text: str, answer: str, after: int = 0) -> tuple[int, int] | None:
    """Byte span of ``answer`` in ``text`` (any whitespace where the answer has a space)."""
    pattern = r"\s+".join(re.escape(w) for w in answer.split())
    m = re.search(r"(?<![\w])" + pattern + r"(?![\w])", text[after:])
    if m is None:
        return None
    a, b = after + m.start(), after + m.end()
    return len(text[:a].encode()), len(text[:b].encode())


_NAME = re.compile(r"[A-Z][\w-]*|[\w-]*\d[\w-]*")


def _names(question: str) -> list[str]:
    """What a question names that its page must state: its capitalised words (after the first)
    and its words with digits ("Mei", "Richter", "INC-29185", "2019")."""
    words = re.findall(r"[\w-]+", question)[1:]
    return [w for w in words if _NAME.fullmatch(w)]


def make_page(rng: random.Random, split: str, max_bytes: int = 4000) -> TextPage:
    """A page of a synthetic document (any kind and layout of lab.data) as text, with its facts
    and, one time in three, extra technical facts and a project needle; up to ``max_bytes``."""
    v = synth._Values(rng, split)
    layout = rng.choice(synth.LAYOUTS)
    title, fact_blocks = rng.choice(synth._KINDS[layout])(v)
    blocks: list[tuple[str, list[tuple[str, str]]]] = [(title, [])]
    filler = synth._filler_blocks(v, layout)
    body: list[tuple[str, list[tuple[str, str]]]] = [(b.html, b.facts) for b in fact_blocks]
    for _ in range(rng.randint(0, 3)):
        statement, question, answer = _tech_fact(rng, v)
        body.append((f"<p>{html.escape(statement)}</p>", [(question, answer)]))
    if rng.random() < 0.35:
        statement, question, answer = synth.needle_fact(rng, v)
        body.append((f"<p>{html.escape(statement)}</p>", [(question, answer)]))
    for _ in range(rng.randint(1, 8)):
        b = next(filler)
        body.append((b.html, []))
    rng.shuffle(body)
    blocks.extend(body)
    width = rng.randint(45, 110)
    pieces, facts_raw = [], []
    for markup, facts in blocks:
        pieces.append(_block_text(rng, markup, width) if markup != title else title)
        facts_raw.extend(facts)
    sep = "\n\n" if rng.random() < 0.3 else "\n"
    text = sep.join(p for p in pieces if p)
    cut = text.encode()[:max_bytes].decode("utf-8", errors="ignore")
    page = TextPage(cut, kind=layout)
    seen = set()
    for question, answer in facts_raw:
        span = _locate(cut, answer)
        if span is None or question in seen:
            continue
        if len(cut) < len(text) and any(name not in cut for name in _names(question)):
            continue  # the cut took what the question names ("Mei Richter's memo": its header)
        # an answer stated twice on the page is ambiguous as a copy target: keep unique ones
        if _locate(cut, answer, after=len(cut.encode()[: span[1]].decode(errors="ignore"))):
            continue
        seen.add(question)
        page.facts.append(TextFact(question, answer, *span))
    return page


# --- samples -------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One training or evaluation item over a memory of text pages."""

    task: str  # "read" | "ask"
    pages: list[str]
    question: str = ""
    answer: str = ""  # "" = not in the memory
    page: int = -1  # index into pages of the page that holds the answer (or is read back)
    start: int = -1  # byte span of the answer in that page
    end: int = -1
    key: str = ""  # the fact's own question, before paraphrase: what another page may answer too


def conflicts(page: TextPage, key: str) -> bool:
    """Whether ``page`` states a fact asked as ``key`` (the same question, so the same subject:
    "When did Nadia Olsen start?", "What is the destination of shipment SHP-64333?"). Value
    pools are finite, so among a thousand pages another may state the fact with another answer:
    beside a needle it makes the question ambiguous, and where the needle is absent it makes the
    question answerable."""
    return any(f.question == key for f in page.facts)


def stream(seed: int, split: str = "train"):
    """An endless, deterministic stream of random generators, one per item of (seed, split)."""
    n = 0
    while True:
        yield random.Random(f"kb-text/{TEXT_DATA_VERSION}/{split}/{seed}/{n}")
        n += 1


def read_sample(rng: random.Random, split: str, distractors: int = 0) -> Sample:
    pages = [make_page(rng, split).text for _ in range(1 + distractors)]
    target = rng.randrange(len(pages))
    return Sample("read", pages, page=target)


def ask_sample(
    rng: random.Random, split: str, n_pages: int, p_absent: float = 0.15, max_bytes: int = 4000
) -> Sample:
    """A question about one fact of one of ``n_pages`` pages (at a random depth), or, with
    ``p_absent``, about a fact of a page that is not in the memory (answer "")."""
    while True:
        holder = make_page(rng, split, max_bytes)
        if holder.facts:
            break
    fact = rng.choice(holder.facts)
    question = paraphrase(rng, fact.question)
    made = [make_page(rng, split, max_bytes) for _ in range(n_pages - 1)]
    # a distractor that holds the same answer string, or states the fact with another answer,
    # would make two right spans
    others = [p.text for p in made if fact.answer not in p.text and not conflicts(p, fact.question)]
    if rng.random() < p_absent:
        pages = others + [make_page(rng, split, max_bytes).text]
        rng.shuffle(pages)
        return Sample("ask", pages, question=question, key=fact.question)
    at = rng.randint(0, len(others))
    pages = others[:at] + [holder.text] + others[at:]
    return Sample("ask", pages, question, fact.answer, at, fact.start, fact.end, fact.question)


@dataclass
class Question:
    question: str
    answer: str = ""  # "" = not in the memory
    page: int = -1
    start: int = -1
    end: int = -1


@dataclass
class MemorySample:
    """Pages and many questions over them: the memory is encoded once, every fact it states
    (with a unique answer) is asked, and some questions whose answer no page holds."""

    pages: list[str]
    questions: list[Question]


def memory_sample(
    rng: random.Random,
    split: str,
    n_pages: int,
    max_questions: int = 16,
    absent: int = 2,
    max_bytes: int = 4000,
) -> MemorySample:
    made = [make_page(rng, split, max_bytes) for _ in range(n_pages)]
    texts = [p.text for p in made]
    questions: list[Question] = []
    for i, page in enumerate(made):
        for fact in page.facts:
            if sum(t.count(fact.answer) for t in texts) != 1:
                continue  # stated twice in the memory: two right spans
            q = paraphrase(rng, fact.question)
            questions.append(Question(q, fact.answer, i, fact.start, fact.end))
    rng.shuffle(questions)
    questions = questions[:max_questions]
    wanted = len(questions) + absent
    for _ in range(5 * absent):  # questions about pages that are not in the memory
        if len(questions) == wanted:
            break
        other = make_page(rng, split, max_bytes)
        facts = [f for f in other.facts if not any(f.answer in t for t in texts)]
        if facts:
            questions.append(Question(paraphrase(rng, rng.choice(facts).question)))
    return MemorySample(texts, questions)
