"""Data loaders for the ``ablate_*`` lm-eval tasks: local files -> the records lm-eval's own tasks expect.

lm-eval loads this file by path (``!function local.NAME`` in the YAMLs next to it), so it uses only
absolute imports. It holds:

- one ``custom_dataset`` loader per task (``load_<task>``). lm-eval calls it as
  ``custom_dataset(**metadata, **dataset_kwargs)``; the loaders read ``data_dir`` (and, for SWDE,
  ``swde_chars``) from there, so ``--metadata '{"data_dir": "..."}'`` points them at another copy of the
  data, and ignore the rest (``version``, ``config_source``, ...). Each returns ``{split: Dataset}`` of
  records with the field names of the ORIGINAL lm-eval task, so lm-eval's prompt templates apply as
  they are;
- the lm-eval functions the YAMLs reuse (WinoGrande's partial context/target, wikitext's detokenizer
  and ``process_results``), re-exported as ``local.NAME``;
- ``LocalSQuADCompletion`` / ``LocalSWDE``: lm-eval's own recall task classes with only their data
  loading replaced.

Each local file is converted ONCE into lm-eval-shaped JSONL in ``cache_dir()``, named by a hash of the
source file bytes (and the converter version and options), written to a temporary file and then
``os.replace``d so a concurrent or interrupted run never reads half a file; later loads read the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import importlib.metadata
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
from lm_eval.tasks.hellaswag.utils import preprocess as hellaswag_preprocess
from lm_eval.tasks.squad_completion.task import SQUADCompletion
from lm_eval.tasks.swde.task import SWDE
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as wikitext_process_results
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice as winogrande_doc_to_choice
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target as winogrande_doc_to_target
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text as winogrande_doc_to_text

from ablate.config import ConfigError
from ablate.evaluate.lm_tasks import cache_dir, data_file

__all__ = [
    "winogrande_doc_to_text", "winogrande_doc_to_target", "winogrande_doc_to_choice",
    "wikitext_detokenizer", "wikitext_process_results",
]

# Bump when any converter's output changes: it is part of every cache file's name, so old files are not reused.
CONVERTER_VERSION = "1"

# Based's recall decoding (lm-eval's SWDE hard-codes it; see LocalSQuADCompletion for why SQuAD needs it set).
RECALL_GENERATION = {"until": ["\n"], "max_gen_toks": 48}
SWDE_DEFAULT_CHARS = 1500


# ----------------------------------------------------------------------------- the conversion cache


def _digest(name: str, sources: Sequence[Path], options: str) -> str:
    """A cache key: the source bytes, the converter and lm-eval versions (conversions call lm-eval's
    preprocessing) and the options."""
    key = f"{name}\0{CONVERTER_VERSION}\0{importlib.metadata.version('lm_eval')}\0{options}"
    digest = hashlib.sha256(key.encode())
    for path in sources:
        data = path.read_bytes()
        digest.update(f"\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:16]


def _write_jsonl_atomically(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is as readable as any other cache file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def cached_records(
    name: str, sources: Sequence[Path], convert: Callable[[], list[dict]], options: str = ""
) -> list[dict]:
    """The records ``convert()`` makes from ``sources``, converted once and then read from the cache."""
    path = cache_dir() / f"{name}-{_digest(name, sources, options)}.jsonl"
    if not path.is_file():
        _write_jsonl_atomically(path, convert())
    return _read_jsonl(path)


def _dataset(records: list[dict]) -> datasets.Dataset:
    # in memory: nothing is written to (or looked up in) the Hugging Face cache
    return datasets.Dataset.from_list(records)


def _labels(path: Path) -> list[str]:
    """A label file: one label a line (blank lines, such as a trailing one, are not labels)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _columns(rows: list[dict]) -> dict[str, list]:
    """A list of records as one record of lists, the way HF datasets store a sequence of structs
    (ARC's ``[{text, label}, ...]`` -> ``{text: [...], label: [...]}``)."""
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def _aligned(docs: list, labels: list, docs_path: Path, labels_path: Path) -> None:
    if len(docs) != len(labels):
        raise ConfigError(f"{docs_path} has {len(docs)} records but {labels_path} has {len(labels)} labels")


# ----------------------------------------------------------------------------- multiple-choice tasks
# Records holding a field "text" are built with dict(text=...): the string is also the name of ablate's
# text task, which tests/test_structure.py allows only in that task's module.


def piqa_records(docs_path: Path, labels_path: Path) -> list[dict]:
    """lm-eval's piqa fields: goal, sol1, sol2, label (int index of the right solution)."""
    docs, labels = _read_jsonl(docs_path), _labels(labels_path)
    _aligned(docs, labels, docs_path, labels_path)
    return [
        {"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(y)}
        for d, y in zip(docs, labels, strict=True)
    ]


def load_piqa(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    docs, labels = data_file("piqa/valid.jsonl", data_dir), data_file("piqa/valid-labels.lst", data_dir)
    return {"validation": _dataset(cached_records("piqa", (docs, labels), lambda: piqa_records(docs, labels)))}


def hellaswag_records(path: Path) -> list[dict]:
    """The fields lm-eval's hellaswag ``process_docs`` produces (query, choices, gold; label kept as the
    dataset's string) from the 6-line text export: query, gold 0-3, then the 4 endings.

    The export's line 1 is ``activity_label: ctx`` already cleaned, so ``ctx_b`` cannot be re-capitalised
    as lm-eval does (``ctx_a + " " + ctx_b.capitalize()``). lm-eval's own ``preprocess`` is applied on top:
    it leaves the export's cleaning as it is and removes the ``[...]`` spans the export kept (14 lines)."""
    with gzip.open(path, "rt", encoding="utf-8") as text:
        lines = text.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ConfigError(f"{path}: {len(lines)} lines is not a whole number of 6-line HellaSwag items")
    records = []
    for start in range(0, len(lines), 6):
        query, gold, *endings = lines[start : start + 6]
        records.append({
            "query": hellaswag_preprocess(query),
            "choices": [hellaswag_preprocess(ending) for ending in endings],
            "gold": int(gold),
            "label": gold.strip(),
        })
    return records


def load_hellaswag(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("hellaswag/hellaswag_val_full.txt.gz", data_dir)
    return {"validation": _dataset(cached_records("hellaswag", (path,), lambda: hellaswag_records(path)))}


def arc_records(path: Path) -> list[dict]:
    """AI2's nested ARC JSONL flattened the way HF ``allenai/ai2_arc`` is: question, choices{text,label}, answerKey."""
    records = []
    for doc in _read_jsonl(path):
        records.append({
            "id": doc["id"],
            "question": doc["question"]["stem"],
            "choices": _columns(doc["question"]["choices"]),
            "answerKey": doc["answerKey"],
        })
    return records


def _load_arc(name: str, relative: str, data_dir: str | None) -> dict[str, datasets.Dataset]:
    path = data_file(relative, data_dir)
    return {"test": _dataset(cached_records(name, (path,), lambda: arc_records(path)))}


def load_arc_easy(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    return _load_arc("arc_easy", "arc/ARC-Easy-Test.jsonl", data_dir)


def load_arc_challenge(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    return _load_arc("arc_challenge", "arc/ARC-Challenge-Test.jsonl", data_dir)


def winogrande_record(item: dict) -> dict:
    """lm-eval's winogrande fields (sentence with ``_``, option1, option2, answer "1"/"2") from a MosaicML
    item (context_options = the sentence up to the blank with each option filled in, continuation =
    the rest, gold 0/1). The sentence's part before ``_`` is the longest common prefix of the two
    contexts, cut back to a word boundary so the options are whole words (``bed`` / ``blanket``, not
    ``ed`` / ``lanket``): either cut reproduces the contexts, only this one gives WinoGrande-like options."""
    first, second = item["context_options"]
    common = os.path.commonprefix([first, second])
    shared = common[: common.rfind(" ") + 1]  # up to and including the last space ("" if there is none)
    continuation = item["continuation"]
    # "_." rather than "_ ." when the sentence goes on with punctuation; lm-eval strips the target either way
    joiner = "" if continuation[:1] in ".,;:!?'" else " "
    return {
        "sentence": f"{shared}_{joiner}{continuation}",
        "option1": first[len(shared):],
        "option2": second[len(shared):],
        "answer": str(int(item["gold"]) + 1),
    }


def winogrande_round_trips(item: dict, record: dict) -> bool:
    """Whether lm-eval's own partial_context/partial_target, applied to ``record``, give back exactly the
    MosaicML item's two contexts and its continuation (and the gold points at the same context)."""
    return (
        winogrande_doc_to_choice(record) == list(item["context_options"])
        and winogrande_doc_to_target(record) == item["continuation"]
        and winogrande_doc_to_text(record) == int(item["gold"])
    )


def winogrande_records(path: Path) -> list[dict]:
    records = []
    for line_number, item in enumerate(_read_jsonl(path), start=1):
        record = winogrande_record(item)
        if not winogrande_round_trips(item, record):
            raise ConfigError(f"{path}: line {line_number} does not convert to lm-eval's winogrande form: {item}")
        records.append(record)
    return records


def load_winogrande(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("winogrande/winogrande_mosaicml_icl.jsonl", data_dir)
    return {"validation": _dataset(cached_records("winogrande", (path,), lambda: winogrande_records(path)))}


def social_iqa_records(docs_path: Path, labels_path: Path) -> list[dict]:
    """lm-eval's social_iqa fields; ``label`` stays the 1-based string "1".."3" of ``dev-labels.lst``,
    as in HF ``allenai/social_i_qa``, because lm-eval's template subtracts 1 (``label|int - 1``)."""
    docs, labels = _read_jsonl(docs_path), _labels(labels_path)
    _aligned(docs, labels, docs_path, labels_path)
    fields = ("context", "question", "answerA", "answerB", "answerC")
    return [{**{f: d[f] for f in fields}, "label": y} for d, y in zip(docs, labels, strict=True)]


def load_social_iqa(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    docs, labels = data_file("siqa/dev.jsonl", data_dir), data_file("siqa/dev-labels.lst", data_dir)
    records = cached_records("social_iqa", (docs, labels), lambda: social_iqa_records(docs, labels))
    return {"validation": _dataset(records)}


_OPENBOOKQA_CHOICE = re.compile(r"\s*\(([A-D])\)\s*")


def openbookqa_records(path: Path) -> list[dict]:
    """The original ``Main/test.tsv`` as HF ``allenai/openbookqa`` (main) has it: id, question_stem,
    choices{text,label}, answerKey. The TSV's Choices column is one string ``(A) ... (B) ... (C) ... (D) ...``."""
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    columns = header.split("\t")
    records = []
    for row_number, row in enumerate(rows, start=2):
        cells = row.split("\t")
        if len(cells) != len(columns):
            raise ConfigError(f"{path}: line {row_number} has {len(cells)} tab-separated cells, not {len(columns)}")
        values = dict(zip(columns, cells, strict=True))
        # re.split with a capturing group: ["", "A", text, "B", text, ...]
        parts = _OPENBOOKQA_CHOICE.split(values["Choices"])
        labels, texts = parts[1::2], [text.strip() for text in parts[2::2]]
        if parts[0].strip() or labels != ["A", "B", "C", "D"]:
            raise ConfigError(f"{path}: line {row_number}: choices do not split into (A)-(D): {values['Choices']!r}")
        records.append({
            "id": values["ID"],
            "question_stem": values["Question Stem"],
            "choices": dict(text=texts, label=labels),
            "answerKey": values["Answer Key"],
        })
    return records


def load_openbookqa(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("openbookqa/test.tsv", data_dir)
    return {"test": _dataset(cached_records("openbookqa", (path,), lambda: openbookqa_records(path)))}


def boolq_records(path: Path) -> list[dict]:
    """super_glue/boolq fields; this SuperGLUE copy's string label "true"/"false" becomes HF's int 1/0."""
    to_int = {"true": 1, "false": 0, True: 1, False: 0}
    return [
        {"question": d["question"], "passage": d["passage"], "idx": int(d["idx"]), "label": to_int[d["label"]]}
        for d in _read_jsonl(path)
    ]


def load_boolq(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("boolq/val.jsonl", data_dir)
    return {"validation": _dataset(cached_records("boolq", (path,), lambda: boolq_records(path)))}


def lambada_openai_records(path: Path) -> list[dict]:
    """EleutherAI/lambada_openai's one field ``text``: MosaicML's context and last word joined by the space
    they were split at (no context ends with, and no continuation starts with, a space)."""
    return [dict(text=d["context"] + " " + d["continuation"]) for d in _read_jsonl(path)]


def load_lambada_openai(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("lambada_openai/lambada_openai_mosaicml_icl.jsonl", data_dir)
    return {"test": _dataset(cached_records("lambada_openai", (path,), lambda: lambada_openai_records(path)))}


# ----------------------------------------------------------------------------- language modelling

# a level-1 heading " = Title = "; level 2 is " = = Section = = ", so the title may not start with "="
_WIKITEXT_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_records(path: Path) -> list[dict]:
    """EleutherAI/wikitext_document_level's field ``page``: the raw test split cut at level-1 headings,
    each page the heading and its lines, every line ending in "\\n". The local file lacks the empty rows
    between paragraphs (so pages are a little shorter than lm-eval's) and has CRLF line ends."""
    text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    pages: list[list[str]] = []
    for line in lines:
        if _WIKITEXT_ARTICLE_HEADING.match(line) or not pages:
            pages.append([])
        pages[-1].append(line + "\n")
    return [{"page": "".join(page)} for page in pages]


def load_wikitext(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("wikitext2_raw/wiki.test.raw", data_dir)
    return {"test": _dataset(cached_records("wikitext", (path,), lambda: wikitext_records(path)))}


# ----------------------------------------------------------------------------- recall tasks


def squad_completion_records(path: Path) -> list[dict]:
    """Based's squad_completion fields (text = the prompt, whose continuation is the answer; value = the
    gold answer) from the answerable SQuAD 2.0 dev questions. Based rewrote each question into a
    statement to complete with an LLM; offline we ask the question instead."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        docs = [json.loads(line) for line in lines if line.strip()]
    return [
        dict(
            id=d["id"],
            title=d["title"],
            text=f"{d['context']}\nQuestion: {d['question']}\nAnswer:",
            value=d["answers"][0],
        )
        for d in docs
        if not d["is_impossible"] and d["answers"]
    ]


def load_squad_completion(data_dir: str | None = None, **_metadata: Any) -> dict[str, datasets.Dataset]:
    path = data_file("squad/squad_v2.0_dev.jsonl.gz", data_dir)
    return {"validation": _dataset(cached_records("squad_completion", (path,), lambda: squad_completion_records(path)))}


SWDE_ATTRIBUTE_LABELS = {
    "author": "Author",
    "isbn_13": "ISBN-13",
    "publication_date": "Publication date",
    "publisher": "Publisher",
    "title": "Title",
}


class _VisibleText(html.parser.HTMLParser):
    """The text of an HTML page a reader could see: every text node outside <script> and <style>."""

    HIDDEN = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.HIDDEN:
            self._hidden_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def _collapse_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def swde_visible_text(page: str) -> str:
    parser = _VisibleText()
    parser.feed(page)
    parser.close()
    return _collapse_whitespace(" ".join(parser.parts))


def swde_value(raw: str) -> str:
    """A groundtruth value as a model should write it: whitespace collapsed and the ": " that the
    booksamillion groundtruth keeps from its page's "ISBN-13 : ..." text node removed."""
    return _collapse_whitespace(raw).lstrip(":").strip()


def _extracted_tar(tar_path: Path) -> Path:
    """``tar_path`` extracted into the cache once (a folder named by the archive's hash, moved into place
    whole, so a folder that exists is complete)."""
    target = cache_dir() / f"swde-{_digest('swde-pages', (tar_path,), '')}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with tarfile.open(tar_path) as archive:
            archive.extractall(staging, filter="data")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # not a concurrent run that got there first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _swde_groundtruth(folder: Path) -> dict[tuple[str, str, str], list[str]]:
    """(site, page id, attribute) -> values, from SWDE's groundtruth files: a header line
    ``vertical<TAB>site<TAB>attribute``, a line of counts, then ``page<TAB>n<TAB>value...`` per page."""
    truth = {}
    for path in sorted(folder.glob("*.txt")):
        header, _counts, *rows = path.read_text(encoding="utf-8-sig").splitlines()
        _vertical, site, attribute = header.split("\t")
        for row in rows:
            page_id, _n, *values = row.split("\t")
            truth[site, page_id, attribute] = values
    return truth


def swde_records(tar_path: Path, chars: int) -> list[dict]:
    """Based's swde fields (text = document then ``\\n{Attribute}:``, value = the gold) from the SWDE book
    pages: each page's visible text cut to its first ``chars`` characters, one item per (page,
    attribute) whose first groundtruth value occurs in that cut text, so every item is answerable
    from its prompt. The groundtruth covers 2,000 pages a site; only the 200 pages shipped are used."""
    root = _extracted_tar(tar_path) / "swde"
    truth = _swde_groundtruth(root / "groundtruth" / "book")
    records = []
    for site_dir in sorted((root / "pages" / "book").iterdir()):
        site = site_dir.name.split("-")[1]  # book-booksamillion-2000 -> booksamillion
        for page_path in sorted(site_dir.glob("*.htm")):
            # a few pages hold bytes that are not UTF-8 (a stray windows-1252 quote); keep the rest of the page
            text = swde_visible_text(page_path.read_text(encoding="utf-8-sig", errors="replace"))[:chars]
            for attribute, label in SWDE_ATTRIBUTE_LABELS.items():
                values = truth.get((site, page_path.stem, attribute)) or []
                value = swde_value(values[0]) if values else ""
                if value and value in text:
                    records.append(dict(
                        doc_id=f"{site}/{page_path.stem}",
                        key=attribute,
                        text=f"{text}\n{label}:",
                        value=value,
                    ))
    return records


def _swde_chars(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"lm-eval metadata swde_chars = {value!r}; allowed: an integer >= 1 (characters of text)")
    return value


def load_swde(data_dir: str | None = None, swde_chars: int = SWDE_DEFAULT_CHARS, **_metadata: Any):
    path, chars = data_file("swde_book/swde_book_subset.tar.gz", data_dir), _swde_chars(swde_chars)
    records = cached_records("swde", (path,), lambda: swde_records(path, chars), options=f"chars={chars}")
    return {"validation": _dataset(records)}


def _loader_options(config: dict | None) -> dict:
    """The metadata a ``class:`` task's loader reads (data_dir, swde_chars), from the config lm-eval passes."""
    return dict((config or {}).get("metadata") or {})


class LocalRecallData:
    """What the local recall tasks change in lm-eval's classes: data loading, nothing else.

    lm-eval builds a ``class:`` task as ``cls(config=<yaml dict>)`` only when ``__init__`` takes ``config``
    (``_ctor_accepts_config``, lm_eval/tasks/_factory.py); SQUADCompletion's and SWDE's take none, so this
    one does, keeps the metadata (``data_dir``, ``swde_chars``) for ``download``, and runs theirs. Their
    generation settings become Based's (until "\\n", 48 tokens): SQUADCompletion's construct_requests falls
    back to those only when generation_kwargs lacks them, but TaskConfig.__post_init__
    (lm_eval/config/task.py) always fills them with lm-eval's defaults (until "\\n\\n", 256 tokens); SWDE
    hard-codes them in its requests, and the recorded config then says what runs."""

    DATASET_PATH = None  # never the Hub
    DATASET_NAME = None
    load = None  # the local loader: metadata -> {split: Dataset}

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        self._loader_options = _loader_options(config)
        super().__init__(**kwargs)
        self.config.generation_kwargs = {**(self.config.generation_kwargs or {}), **RECALL_GENERATION}

    def download(self, *args: Any, **kwargs: Any) -> None:
        self.dataset = type(self).load(**self._loader_options)


class LocalSQuADCompletion(LocalRecallData, SQUADCompletion):
    """lm-eval's SQUADCompletion (prompt = the doc's ``text``, ``contains`` scoring) on local SQuAD 2.0 items."""

    load = staticmethod(load_squad_completion)


class LocalSWDE(LocalRecallData, SWDE):
    """lm-eval's SWDE (prompt = the doc's ``text``, ``contains`` scoring) on the local SWDE book pages."""

    load = staticmethod(load_swde)
