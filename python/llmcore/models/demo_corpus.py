"""English training text for the built-in demo model, taken from Debian packages whose
licenses allow redistribution and derived works (public domain, MIT, BSD).

The packages (Debian 12 "bookworm"; any machine with apt can fetch them, and the .deb files
are all a training run needs, offline):

    mkdir -p .carry/demo-debs && cd .carry/demo-debs && apt-get download \\
        r-cran-janeaustenr r-cran-tokenizers r-cran-wordcloud sword-text-web \\
        fortunes fortunes-min dict-devil jargon-text display-dhammapada

or ``python -m llmcore.models.demo_corpus fetch`` (same list, into .carry/demo-debs/), then
``python -m llmcore.models.demo_corpus stats --debs .carry/demo-debs`` to print what each
source contributes.

What is read from each package (demo_sources.SOURCES has the licenses):
- r-cran-janeaustenr: Jane Austen's six novels (R lazy-load database of line vectors);
- r-cran-tokenizers: Melville's Moby Dick (one R string, a Project Gutenberg text);
- r-cran-wordcloud: three State of the Union addresses (an .RData file);
- sword-text-web: the World English Bible (SWORD zText: zlib blocks of OSIS markup);
- fortunes, fortunes-min: quotations (the fortune-mod sets that are not offensive);
- dict-devil: Ambrose Bierce's The Devil's Dictionary (dictd .dict.dz);
- jargon-text: the Jargon File 4.4.7;
- display-dhammapada: the Dhammapada in John Richards' translation.

`build_corpus()` cleans every source into documents (chapters, entries, quotations), splits
them into train / held-out by a hash of their text (the same split on every machine), and
builds chat-formatted examples from the quotations, verses and definitions of each split
(`render_chat` writes the ChatML text the model's chat template produces).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

if __package__:
    from .demo_sources import (DEFAULT_DEB_DIR, SOURCES, Quote, SourceText, drop_offensive_paragraphs,
                               fetch_debs, is_offensive, lines_from_prose, normalize, parse_fortunes,
                               read_deb, unwrap, words)
else:  # imported by train_demo run as a script (see its docstring)
    from demo_sources import (DEFAULT_DEB_DIR, SOURCES, Quote, SourceText, drop_offensive_paragraphs,
                              fetch_debs, is_offensive, lines_from_prose, normalize, parse_fortunes,
                              read_deb, unwrap, words)

BOS_TOKEN = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, IM_END)
# transformers' chat template for the demo model (ChatML after the BOS token); render_chat()
# writes the same text for the training examples.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render_chat(messages: Sequence[Dict[str, str]], add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE's output without the leading BOS (the tokenizer adds it to every text)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


@dataclasses.dataclass
class Corpus:
    train: List[str]
    heldout: List[str]
    train_chats: List[str]
    heldout_chats: List[str]
    stats: List[Dict[str, object]]

    def summary(self) -> Dict[str, int]:
        return {"train_chars": sum(map(len, self.train)) + sum(map(len, self.train_chats)),
                "heldout_chars": sum(map(len, self.heldout)) + sum(map(len, self.heldout_chats)),
                "train_documents": len(self.train), "heldout_documents": len(self.heldout),
                "train_chats": len(self.train_chats), "heldout_chats": len(self.heldout_chats)}


# ---------------------------------------------------------------------------------------------
# Chat examples

# Topics a user might ask about; an example is made only when the quoted text has the word.
TOPICS = tuple("""love time life death money work friend friendship war peace truth god wisdom fool
heart mind soul happiness joy sorrow fear hope faith courage honor pride beauty art music book
books science nature sea ship whale night day morning sun moon star stars rain wind fire water
earth sky king queen law justice power freedom children child mother father family marriage
wife husband woman man men women youth age memory dream dreams silence words kindness anger
patience virtue sin heaven hell light darkness food wine bread money wealth poverty success
failure learning knowledge teacher school computer computers programs politics government
people nation country city home house garden tree trees flower flowers birds animals horse
dog cat health doctor medicine laughter tears letter letters dance ball fortune luck chance
future past history change mistake mistakes enemy enemies neighbor sleep road journey
""".split())

_SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant.",
                   "You are a helpful assistant who answers with quotations.",
                   "You are a well-read assistant.")
_ABOUT = ("Give me a quotation about {topic}.", "Do you know a quote about {topic}?",
          "What is a good quote about {topic}?", "Tell me something wise about {topic}.",
          "Share a famous saying about {topic}.", "Quote someone on {topic}, please.")
_LINE = ("Give me a line from {title} about {topic}.", "Quote {author} on {topic}.",
         "What did {author} write about {topic}?", "Share a sentence from {title} that mentions {topic}.")
_VERSE = ("What does the Bible say about {topic}?", "Quote a Bible verse about {topic}.",
          "Give me a verse about {topic}.", "Is there a verse about {topic}?")
_DHAMMA = ("Share a verse from the Dhammapada about {topic}.", "What does the Dhammapada say about {topic}?")
_DEFINE = ("Define \"{term}\" the way Ambrose Bierce did.", "What is {term}, according to The Devil's Dictionary?",
           "How does The Devil's Dictionary define {term}?")
_JARGON = ("What does \"{term}\" mean in hacker slang?", "What is {term} in the Jargon File?",
           "Explain the hacker term \"{term}\".")


def _topic_of(text: str, rng: random.Random) -> Optional[str]:
    found = set(words(text))
    hits = [t for t in TOPICS if t in found]
    return rng.choice(hits) if hits else None


def _answers(q: Quote, rng: random.Random) -> List[Tuple[str, str]]:
    """(user question, assistant answer) pairs that `q` answers."""
    out = []
    topic = _topic_of(q.text, rng)
    if q.kind == "quote":
        if topic:
            out.append((rng.choice(_ABOUT).format(topic=topic), f"\"{q.text}\"\n-- {q.author}"))
        if len(q.text) <= 200 and "\n" not in q.text:
            ask = rng.choice(("Who said \"{t}\"?", "Who wrote \"{t}\"?", "Where is \"{t}\" from?"))
            who, _, work = q.author.partition(",")
            work = f", in {work.strip()}" if work.strip() else ""
            out.append((ask.format(t=q.text), f"That is {who.strip()}{work}."))
    elif q.kind == "line" and topic:
        ask = rng.choice(_LINE).format(title=q.cite, author=q.author, topic=topic)
        out.append((ask, f"From {q.cite}, by {q.author}:\n\"{q.text}\""))
    elif q.kind == "verse" and topic:
        pool = _DHAMMA if q.cite.startswith("Dhammapada") else _VERSE
        out.append((rng.choice(pool).format(topic=topic), f"\"{q.text}\" ({q.cite})"))
    elif q.kind == "definition":
        out.append((rng.choice(_DEFINE).format(term=q.cite.lower()), f"{q.cite}: {q.text}."))
    elif q.kind == "jargon":
        out.append((rng.choice(_JARGON).format(term=q.cite), q.text))
    return out


def build_chats(quotes: Sequence[Quote], seed: int, max_per_kind: int = 4000) -> List[str]:
    """ChatML conversations (render_chat) from the quotes: one question each, some with a
    system prompt, some two turns long. At most `max_per_kind` pairs per kind of quote."""
    rng = random.Random(seed)
    by_kind: Dict[str, List[Tuple[str, str]]] = {}
    for q in quotes:
        for pair in _answers(q, rng):
            by_kind.setdefault(q.kind, []).append(pair)
    pairs = []
    for kind in sorted(by_kind):
        items = by_kind[kind]
        rng.shuffle(items)
        pairs += items[:max_per_kind]
    rng.shuffle(pairs)
    chats, i = [], 0
    while i < len(pairs):
        turns = 2 if rng.random() < 0.2 and i + 1 < len(pairs) else 1
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        for user, assistant in pairs[i:i + turns]:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        chats.append(render_chat(messages))
        i += turns
    return chats


# ---------------------------------------------------------------------------------------------
# The corpus

def is_heldout(text: str, heldout_permille: int) -> bool:
    """The split: a document is held out when the CRC-32 of its text falls in the first
    `heldout_permille` of 1000 buckets (independent of order, machine and Python version)."""
    return zlib.crc32(text.encode("utf-8")) % 1000 < heldout_permille


def _read_text_dir(text_dir: Path) -> List[Tuple[Dict[str, object], SourceText]]:
    """--text-dir: every *.txt is a source of prose documents (separated by two blank lines);
    every *.fortunes is a source in fortune(6) format. LICENSE in the directory, if present,
    is recorded as the license."""
    license_file = text_dir / "LICENSE"
    license_text = license_file.read_text().strip().splitlines()[0] if license_file.exists() else "unspecified"
    out = []
    for path in sorted(text_dir.iterdir()):
        if path.suffix == ".txt":
            raw = path.read_text(encoding="utf-8").replace("\r", "")
            docs = [d for d in (unwrap(normalize(part)) for part in re.split(r"\n[ \t]*\n[ \t]*\n", raw)) if d]
            text = SourceText(docs, [q for d in docs for q in lines_from_prose(d, path.stem, "Anonymous")])
        elif path.suffix == ".fortunes":
            docs, quotes = parse_fortunes(path.read_text(encoding="utf-8"))
            text = SourceText(docs, quotes)
        else:
            continue
        meta = {"source": path.stem, "package": f"(text file {path.name})", "version": "",
                "title": path.stem, "license": license_text}
        out.append((meta, text))
    return out


def _read_debs(debs_dir: Path, only: Optional[Iterable[str]]) -> List[Tuple[Dict[str, object], SourceText]]:
    debs = {}
    for deb in sorted(Path(debs_dir).glob("*.deb")):
        debs.setdefault(deb.name.split("_")[0], deb)
    out = []
    for src in SOURCES:
        if only is not None and src.name not in only:
            continue
        if src.package not in debs:
            raise FileNotFoundError(
                f"{debs_dir} has no {src.package}_*.deb; fetch the packages with "
                f"`python -m llmcore.models.demo_corpus fetch --dest {debs_dir}`")
        control, files = read_deb(debs[src.package], src.wants)
        meta = {"source": src.name, "package": src.package, "version": control.get("Version", ""),
                "deb": debs[src.package].name, "title": src.title, "license": src.license}
        out.append((meta, src.read(files)))
    return out


def build_corpus(debs_dir: Optional[Path] = None, text_dir: Optional[Path] = None,
                 heldout_permille: int = 20, seed: int = 0,
                 sources: Optional[Iterable[str]] = None, max_chats_per_kind: int = 4000) -> Corpus:
    """Reads every source, splits its documents and quotations into train / held-out, builds
    the chat examples of each split, and shuffles each list with `seed`."""
    if (debs_dir is None) == (text_dir is None):
        raise ValueError("give exactly one of debs_dir and text_dir")
    read = _read_text_dir(Path(text_dir)) if text_dir is not None else _read_debs(Path(debs_dir), sources)
    corpus = Corpus([], [], [], [], [])
    train_quotes: List[Quote] = []
    heldout_quotes: List[Quote] = []
    for meta, text in read:
        kept = [d for d in (drop_offensive_paragraphs(d) for d in text.documents) if d.strip()]
        meta["offensive_paragraphs_dropped"] = sum(d.count("\n\n") + 1 for d in text.documents) - sum(
            d.count("\n\n") + 1 for d in kept)
        text = SourceText(kept, [q for q in text.quotes if not is_offensive(f"{q.text} {q.author} {q.cite}")])
        train = [d for d in text.documents if not is_heldout(d, heldout_permille)]
        heldout = [d for d in text.documents if is_heldout(d, heldout_permille)]
        corpus.train += train
        corpus.heldout += heldout
        for q in text.quotes:
            (heldout_quotes if is_heldout(q.text, heldout_permille) else train_quotes).append(q)
        meta.update({"documents": len(text.documents), "quotes": len(text.quotes),
                     "chars": sum(map(len, text.documents)), "train_chars": sum(map(len, train)),
                     "heldout_chars": sum(map(len, heldout))})
        corpus.stats.append(meta)
    corpus.train_chats = build_chats(train_quotes, seed, max_chats_per_kind)
    corpus.heldout_chats = build_chats(heldout_quotes, seed + 1, max(1, max_chats_per_kind * heldout_permille // 1000))
    rng = random.Random(seed)
    for docs in (corpus.train, corpus.heldout):
        rng.shuffle(docs)
    return corpus


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmcore.models.demo_corpus", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="apt-get download the source packages")
    f.add_argument("--dest", type=Path, default=DEFAULT_DEB_DIR)
    s = sub.add_parser("stats", help="print each source's size, license and a sample")
    s.add_argument("--debs", type=Path, default=DEFAULT_DEB_DIR)
    s.add_argument("--dump", type=Path, help="also write train.txt / heldout.txt / chats.txt here")
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        for path in fetch_debs(args.dest):
            print(path)
        return 0
    corpus = build_corpus(debs_dir=args.debs)
    for row in corpus.stats:
        print(json.dumps(row))
    print(json.dumps(corpus.summary()))
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        sep = "\n" + BOS_TOKEN + "\n"
        (args.dump / "train.txt").write_text(sep.join(corpus.train))
        (args.dump / "heldout.txt").write_text(sep.join(corpus.heldout))
        (args.dump / "chats.txt").write_text(sep.join(corpus.train_chats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
