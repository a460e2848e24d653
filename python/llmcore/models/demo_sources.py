"""The sources of the demo model's training text: readers for the files of the Debian packages
that hold it (R data, SWORD modules, fortune files, dictd files, plain text), cleaned into
documents plus the short quotable pieces (quotations, verses, definitions) that the chat
examples are built from. demo_corpus.py puts them together; its docstring lists the packages.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
import struct
import subprocess
import tarfile
import unicodedata
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Tuple

if __package__:
    from . import rdata
else:  # imported by train_demo run as a script (see its docstring)
    import rdata

DEFAULT_DEB_DIR = Path(".carry") / "demo-debs"


@dataclasses.dataclass
class Quote:
    """A short text a chat answer can quote: `text`, who said or wrote it, and `cite`, the
    reference printed after it ("Genesis 1:3", "Emma")."""
    text: str
    author: str = ""
    cite: str = ""
    kind: str = "quote"  # quote | verse | line | definition | jargon


@dataclasses.dataclass
class SourceText:
    """What a source reader returns: cleaned documents and the quotable pieces found in them."""
    documents: List[str]
    quotes: List[Quote]


@dataclasses.dataclass(frozen=True)
class Source:
    """One Debian package's text: `read` turns the package files that `wants` selects into a
    SourceText; `license` is what the package's copyright file says about the text."""
    name: str
    package: str
    title: str
    license: str
    read: Callable[[Dict[str, bytes]], SourceText]
    wants: Callable[[str], bool]  # which files of the package read() needs


# ---------------------------------------------------------------------------------------------
# Text cleaning

_CHAR_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                           "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2014": "--",
                           "\u2013": "-", "\u2026": "...", "\u00a0": " ", "\u2009": " ",
                           "\u200b": "", "\ufeff": "", "\t": "    ", "\r": "", "\u00ad": ""})


def normalize(text: str) -> str:
    """NFC, ASCII quotes and dashes, LF line ends, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text).translate(_CHAR_MAP)
    text = re.sub(r"[\u2500-\u257f]+", "", text)  # box-drawing rules
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def unwrap(text: str) -> str:
    """Joins hard-wrapped lines into one line per paragraph (paragraphs: blank-line separated)."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", text):
        joined = re.sub(r"\s+", " ", para).strip()
        if joined:
            paragraphs.append(joined)
    return "\n\n".join(paragraphs)


# Slurs and strong profanity: fortunes, dictionary entries and chat quotations that contain one
# are dropped whole, and so are the paragraphs of prose that do (19th-century usage, hacker slang).
_OFFENSIVE = re.compile(
    r"\b(fuck\w*|motherf\w*|shit\w*|bullshit\w*|cunt\w*|nigg\w*|negro\w*|fags?|faggot\w*|kikes?|spics?|"
    r"chinks?|wetbacks?|trann(y|ies)|whore\w*|whoring|sluts?|slutty|bitch\w*|dykes?|retard\w*|twats?|wank\w*|"
    r"jizz|puss(y|ies)|dildo\w*|porn\w*)\b", re.I)


def is_offensive(text: str) -> bool:
    """Whether the text has a slur or strong profanity (a short word list; whole words)."""
    return _OFFENSIVE.search(text) is not None


def drop_offensive_paragraphs(text: str) -> str:
    """The text without its paragraphs (blank-line separated) for which is_offensive holds."""
    return "\n\n".join(p for p in text.split("\n\n") if not is_offensive(p))


def words(text: str) -> List[str]:
    """The lower-cased runs of ASCII letters of the text."""
    return re.findall(r"[A-Za-z]+", text.lower())


# ---------------------------------------------------------------------------------------------
# .deb files (ar archive holding control.tar.* and data.tar.*)

def read_deb(path: Path, wants: Callable[[str], bool]) -> Tuple[Dict[str, str], Dict[str, bytes]]:
    """-> (control fields, {path in the package: bytes} for the paths `wants` accepts).
    Pure Python (ar + tarfile), so no dpkg is needed."""
    data = Path(path).read_bytes()
    if data[:8] != b"!<arch>\n":
        raise ValueError(f"{path} is not a .deb (ar) archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    control, files = {}, {}
    for name, blob in members.items():
        if not name.startswith(("control.tar", "data.tar")):
            continue
        if name.endswith(".zst"):
            raise ValueError(f"{path}: zstd-compressed {name} is not supported (Debian uses xz)")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                rel = info.name.lstrip("./")
                if name.startswith("control") and rel == "control":
                    for line in tar.extractfile(info).read().decode("utf-8", "replace").splitlines():
                        if ":" in line and not line.startswith(" "):
                            key, value = line.split(":", 1)
                            control[key] = value.strip()
                elif name.startswith("data") and wants(rel):
                    files[rel] = tar.extractfile(info).read()
    return control, files


def fetch_debs(dest: Path = DEFAULT_DEB_DIR) -> List[Path]:
    """apt-get download of every package in SOURCES into `dest` (needs apt and the network)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    packages = sorted({s.package for s in SOURCES})
    subprocess.run(["apt-get", "download", *packages], cwd=dest, check=True)
    return sorted(dest.glob("*.deb"))


# ---------------------------------------------------------------------------------------------
# Sources

def _only(files: Dict[str, bytes], suffix: str) -> bytes:
    hits = [v for k, v in files.items() if k.endswith(suffix)]
    if len(hits) != 1:
        raise ValueError(f"expected one file ending in {suffix}, found {len(hits)}")
    return hits[0]


_AUSTEN_TITLES = {"emma": "Emma", "mansfieldpark": "Mansfield Park",
                  "northangerabbey": "Northanger Abbey", "persuasion": "Persuasion",
                  "prideprejudice": "Pride and Prejudice", "sensesensibility": "Sense and Sensibility"}
_CHAPTER_LINE = re.compile(r"^\s*(CHAPTER|Chapter)\s+[IVXLC\d]+\.?\s*$")


_ABBREVIATION = re.compile(r"\b(Mr|Mrs|Dr|St|Messrs|Col|Capt|Gen|Rev|Sir|Lt|Mt|No|vs|viz|i\.e|e\.g)\.$|\b[A-Z]\.$")


def _split_sentences(paragraph: str) -> List[str]:
    sentences: List[str] = []
    for piece in re.split(r'(?<=[.!?])\s+(?=["A-Z])', paragraph):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] += " " + piece
        elif piece.strip():
            sentences.append(piece.strip())
    return sentences


def lines_from_prose(doc: str, title: str, author: str) -> List[Quote]:
    """The document's sentences of 8 to 40 words (balanced quotes) as quotable lines."""
    out = []
    for para in doc.split("\n\n"):
        for sentence in _split_sentences(para):
            n = len(sentence.split())
            if 8 <= n <= 40 and sentence.count('"') % 2 == 0 and sentence[0].isupper():
                out.append(Quote(sentence, author, title, "line"))
    return out


def read_austen(files: Dict[str, bytes]) -> SourceText:
    """janeaustenr's data: one character vector of lines per novel; a document per chapter."""
    novels = rdata.read_lazyload_db(_only(files, "data/Rdata.rdx"), _only(files, "data/Rdata.rdb"))
    docs, quotes = [], []
    for key in sorted(novels):
        title = _AUSTEN_TITLES.get(key, key)
        chapters, current = [], None
        for line in novels[key]:
            line = line or ""
            if _CHAPTER_LINE.match(line):
                current = []
                chapters.append(current)
            elif current is not None and not re.match(r"^\s*(VOLUME|Volume) [IVX]+\s*$", line):
                current.append(line)
        for lines in chapters:
            text = unwrap(normalize("\n".join(lines)).replace("_", ""))
            if text:
                docs.append(text)
                quotes += lines_from_prose(text, title, "Jane Austen")
    return SourceText(docs, quotes)


def read_moby_dick(files: Dict[str, bytes]) -> SourceText:
    """tokenizers' `mobydick`: the Gutenberg text as one string; a document per chapter, without
    the Gutenberg header and license and the etymology and extracts before chapter 1."""
    (text,) = rdata.read_lazyload_db(_only(files, "data/Rdata.rdx"), _only(files, "data/Rdata.rdb"))["mobydick"]
    text = normalize(text)
    end = text.find("*** END OF")
    text = text[:end] if end >= 0 else text
    start = [m.start() for m in re.finditer(r"^CHAPTER 1\. Loomings\.$", text, re.M)]
    if not start:
        raise ValueError("Moby Dick: chapter 1 not found")
    text = text[start[-1]:]
    end = text.find("End of Project Gutenberg")
    text = text[:end] if end >= 0 else text
    docs, quotes = [], []
    for chapter in re.split(r"^(?:CHAPTER \d+\.|Epilogue)[^\n]*$", text, flags=re.M):
        chapter = unwrap(chapter.replace("_", ""))
        if len(chapter) > 200:
            docs.append(chapter)
            quotes += lines_from_prose(chapter, "Moby Dick", "Herman Melville")
    return SourceText(docs, quotes)


def read_sotu(files: Dict[str, bytes]) -> SourceText:
    """wordcloud's `SOTU`, a tm corpus of State of the Union addresses; a document per address."""
    corpus = rdata.read_rdata(_only(files, "data/SOTU.RData"))["SOTU"]
    docs = []
    corpus = dict(zip(corpus.names, corpus))["content"]  # a tm VCorpus
    for document in corpus:  # a tm PlainTextDocument: list(content = character vector, meta)
        content = dict(zip(document.names, document))["content"]
        docs.append(unwrap(normalize("\n".join(content)).replace("\n", "\n\n")))  # a line per paragraph
    return SourceText([d for d in docs if d], [])


_OSIS_DROP = re.compile(r"<(note|title|rdg)\b[^>]*?(?<!/)>.*?</\1>", re.S)


def _osis_to_text(markup: str) -> str:
    markup = _OSIS_DROP.sub(" ", markup)  # "God<note>..</note>created": keep the words apart
    markup = re.sub(r'<div\b[^>]*type="x-p"[^>]*/>', "\n\n", markup)
    markup = re.sub(r"<l\b[^>]*sID[^>]*/>|<lb\b[^>]*/>", "\n", markup)
    markup = re.sub(r"<lg\b[^>]*/>", "\n\n", markup)
    text = re.sub(r"<[^>]+>", "", markup)
    return text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')


def _sword_entries(bzs: bytes, bzz: bytes, bzv: bytes) -> List[str]:
    """Entries of a SWORD zText testament: .bzs lists (offset, size, unpacked size) of the zlib
    blocks in .bzz; .bzv lists (block, offset, size) of each entry in the unpacked blocks."""
    blocks = [zlib.decompress(bzz[o:o + s]) for o, s, _ in
              (struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12))]
    entries = []
    for i in range(0, len(bzv) - 9, 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i)
        entries.append(blocks[block][offset:offset + size].decode("utf-8") if size else "")
    return entries


def read_web_bible(files: Dict[str, bytes]) -> SourceText:
    """The World English Bible (OSIS in a SWORD zText module); a document per chapter without
    footnotes and headings; each verse of 6 to 45 words is a quote cited as "Book c:v"."""
    docs, quotes = [], []
    for testament in ("ot", "nt"):
        entries = _sword_entries(*(_only(files, f"/{testament}.{ext}") for ext in ("bzs", "bzz", "bzv")))
        book, chapter, verse, chapter_parts = "", 0, 0, []

        def flush():
            text = normalize(re.sub(r" +([,.;:!?])", r"\1", re.sub(r"[ ]+", " ", "".join(chapter_parts))))
            text = "\n".join(line.strip() for line in text.split("\n"))
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if text:
                docs.append(text)
            chapter_parts.clear()

        for entry in entries:
            names = re.findall(r'<milestone n="([^"]+)" type="x-usfm-h"/>', entry)
            if names:
                book = names[-1]  # the first book's heading shares an entry with the preface
            start = re.search(r'<chapter n="(\d+)"[^>]*sID=', entry)
            if start:
                flush()
                chapter, verse = int(start.group(1)), 0
                continue
            if not chapter:
                continue  # the module's and the books' introductions
            verse += 1
            text = _osis_to_text(entry)
            chapter_parts.append(text)
            plain = normalize(re.sub(r" +([,.;:!?])", r"\1", re.sub(r"\s+", " ", text))).strip()
            if 6 <= len(plain.split()) <= 45:
                quotes.append(Quote(plain, "", f"{book} {chapter}:{verse}", "verse"))
        flush()
    return SourceText(docs, quotes)


# fortune-mod sets left out: offensive or about groups of people (ethnic, men-women, drugs),
# pictures and code (ascii-art, perl), and noise (zippy, translate-me, knghtbrd: IRC logs).
FORTUNE_SETS = ("art", "computers", "cookie", "definitions", "education", "food", "goedel",
                "humorists", "kids", "law", "linux", "literature", "love", "magic", "medicine",
                "miscellaneous", "news", "paradoxum", "people", "pets", "platitudes", "politics",
                "pratchett", "riddles", "science", "songs-poems", "sports", "startrek", "tao",
                "wisdom", "work", "fortunes")
_ATTRIBUTION = re.compile(r"^\s*--\s*(.+)$")


def parse_fortunes(text: str) -> Tuple[List[str], List[Quote]]:
    """fortune(6) format: entries separated by '%' lines; an attribution line starts with '--'."""
    docs, quotes = [], []
    for entry in re.split(r"^%\s*$", normalize(text), flags=re.M):
        lines = entry.split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            continue
        letters = sum(c.isalpha() for c in entry)
        if letters < 0.6 * len(entry.replace(" ", "").replace("\n", "")):
            continue  # drawings and tables
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        lines = [line[indent:] for line in lines]
        author = ""
        for i in range(len(lines) - 1, 0, -1):
            m = _ATTRIBUTION.match(lines[i])
            if m:
                author = " ".join([m.group(1)] + [line.strip() for line in lines[i + 1:]]).strip()
                body = lines[:i]
                break
        else:
            body = lines
        body_text = "\n".join(body).strip()
        if not body_text or is_offensive(entry):
            continue
        docs.append(body_text + (f"\n-- {author}" if author else ""))
        if author and len(body_text) <= 400:
            prose = body_text if "\n\n" in body_text or len(body) <= 1 else unwrap(body_text)
            quotes.append(Quote(prose, author, "", "quote"))
    return docs, quotes


def _group(docs: List[str], size: int) -> List[str]:
    """Short documents (quotations, dictionary entries) joined `size` at a time."""
    return ["\n\n".join(docs[i:i + size]) for i in range(0, len(docs), size)]


def read_fortunes(files: Dict[str, bytes]) -> SourceText:
    """Fortune files; documents of 8 fortunes each."""
    docs, quotes = [], []
    for name in sorted(files):
        text = files[name].decode("utf-8", "replace")
        d, q = parse_fortunes(text)
        docs += d
        quotes += q
    return SourceText(_group(docs, 8), quotes)


_DEVIL_ENTRY = re.compile(r"^([A-Z][A-Z' \-]+),\s+(n|v|adj|adv|pp|p|pron|prep|conj|interj|x|v\.t|v\.i)\b")


def read_devil(files: Dict[str, bytes]) -> SourceText:
    """The Devil's Dictionary (dictd data file); documents of 5 entries each, and each short
    definition as a quote cited by its headword."""
    text = normalize(gzip.decompress(_only(files, "devil.dict.dz")).decode("latin-1"))
    first = re.search(r"^A, n\.|^ABASEMENT, n\.", text, re.M)
    text = text[first.start():] if first else text
    entries: List[List[str]] = []
    for para in re.split(r"\n\s*\n", text):
        if _DEVIL_ENTRY.match(para):
            entries.append([para])
        elif entries:
            entries[-1].append(para)
    docs, quotes = [], []
    for paras in entries:
        # Verse stays as lines; prose paragraphs are unwrapped.
        cleaned = [unwrap(p) if not p.startswith("    ") else "\n".join(l.strip() for l in p.split("\n"))
                   for p in paras]
        entry = "\n\n".join(c for c in cleaned if c).replace("_", "")
        if is_offensive(entry):
            continue
        docs.append(entry)
        m = _DEVIL_ENTRY.match(cleaned[0])
        definition = cleaned[0][m.end():].strip(" .").replace("_", "")
        if 3 <= len(definition.split()) <= 80:
            quotes.append(Quote(definition, "Ambrose Bierce", m.group(1).strip().title(), "definition"))
    return SourceText(_group(docs, 5), quotes)


def read_jargon(files: Dict[str, bytes]) -> SourceText:
    """The Jargon File (plain text): a document per chapter and per lexicon entry (tables of
    contents dropped, {cross-reference} braces removed); each entry's first paragraph of
    definition is a quote cited by its term."""
    text = normalize(gzip.decompress(_only(files, "jargon.txt.gz")).decode("utf-8", "replace"))
    start = text.find("Chapter 1. Hacker Slang and Hacker Culture")
    text = text[start:] if start >= 0 else text
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    docs, quotes, current, term = [], [], [], ""

    def flush():
        body = "\n\n".join(current).strip()
        if body and not is_offensive(body):
            docs.append(body)
            if term:
                first = body.split("\n\n")[1] if "\n\n" in body else ""
                name = f"the {term[:-5]}" if term.endswith(", the") else term  # "locals, the"
                if 5 <= len(first.split()) <= 90:
                    quotes.append(Quote(first, "", name, "jargon"))
        current.clear()

    for para in re.split(r"\n\s*\n", text):
        one_line = " ".join(para.split())
        header = re.match(r"^:([^:]+):\s*(.*)$", one_line)
        if header or re.match(r"^(Chapter \d+|Appendix [A-Z])\.", one_line):
            flush()
            term = header.group(1) if header else ""
            current.append(f"{header.group(1)}: {header.group(2)}".strip() if header else one_line)
            continue
        if "\n" not in para.strip() and len(one_line.split()) <= 6 and not re.search(r"[.?!:\")]$", one_line):
            continue  # tables of contents: one short line per paragraph
        current.append(unwrap(para))
    flush()
    return SourceText(docs, quotes)


def read_dhammapada(files: Dict[str, bytes]) -> SourceText:
    """The Dhammapada in John Richards' translation; a document per chapter, each verse a quote."""
    text = normalize(_only(files, "dhammapada-english-transl.txt").decode("latin-1"))
    start = text.find("(An Anthology of Verses)")
    text = text[start + len("(An Anthology of Verses)"):] if start >= 0 else text
    text = text.split("The End.")[0]
    docs, quotes, chapter = [], [], []
    for para in re.split(r"\n\s*\n", text):
        para = unwrap(para)
        if re.match(r"^\d+\. [A-Z][\w ,'-]*$", para):  # "1. The Pairs"
            if chapter:
                docs.append("\n\n".join(chapter))
            chapter = [para]
            continue
        m = re.match(r"^(.*\S)\s+(\d+)$", para)
        if m:
            chapter.append(m.group(1))
            quotes.append(Quote(m.group(1), "", f"Dhammapada, verse {m.group(2)}", "verse"))
        elif para:
            chapter.append(para)
    if chapter:
        docs.append("\n\n".join(chapter))
    return SourceText(docs, quotes)


SOURCES: Tuple[Source, ...] = (
    Source("austen", "r-cran-janeaustenr", "Jane Austen, the six novels (1811-1818)",
           "text: public domain (published 1811-1818); package: MIT", read_austen,
           lambda p: p.endswith(("data/Rdata.rdx", "data/Rdata.rdb"))),
    Source("moby_dick", "r-cran-tokenizers", "Herman Melville, Moby Dick (1851), Project Gutenberg #2701",
           "text: public domain (1851); package: MIT", read_moby_dick,
           lambda p: p.endswith(("data/Rdata.rdx", "data/Rdata.rdb"))),
    Source("sotu", "r-cran-wordcloud", "State of the Union addresses 2010-2012",
           "text: public domain (works of the US government); package: LGPL-2.1", read_sotu,
           lambda p: p.endswith("data/SOTU.RData")),
    Source("web_bible", "sword-text-web", "World English Bible with Deuterocanon",
           "public domain (dedicated by eBible.org)", read_web_bible,
           lambda p: bool(re.search(r"/(ot|nt)\.bz[svz]$", p))),
    Source("fortunes", "fortunes", "fortune-mod quotations ("
           + ", ".join(s for s in FORTUNE_SETS if s not in ("fortunes", "literature", "riddles")) + ")",
           "BSD-3-Clause (fortune-mod)", read_fortunes,
           lambda p: p.startswith("usr/share/games/fortunes/") and p.rsplit("/", 1)[-1] in FORTUNE_SETS),
    Source("fortunes_min", "fortunes-min", "fortune-mod quotations (fortunes, literature, riddles)",
           "BSD-3-Clause (fortune-mod)", read_fortunes,
           lambda p: p.startswith("usr/share/games/fortunes/") and p.rsplit("/", 1)[-1] in FORTUNE_SETS),
    Source("devil", "dict-devil", "Ambrose Bierce, The Devil's Dictionary (1911)",
           "public domain (copyright expired)", read_devil, lambda p: p.endswith("devil.dict.dz")),
    Source("jargon", "jargon-text", "The Jargon File 4.4.7 (Eric S. Raymond, ed.)",
           "public domain", read_jargon, lambda p: p.endswith("jargon.txt.gz")),
    Source("dhammapada", "display-dhammapada", "The Dhammapada, translated by John Richards (1993)",
           "public domain (dedicated by the translator)", read_dhammapada,
           lambda p: p.endswith("dhammapada-english-transl.txt")),
)
