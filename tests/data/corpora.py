"""Small corpora for the data tests."""

import json

# Hand-written documents exercising what tokenizers get wrong: unicode, whitespace runs, digits, newlines.
SAMPLE_DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Naïve café owners in Zürich serve crème brûlée — 東京 and 🙂 too.",
    "Line one\nLine two with  two spaces\n\tand a tab.",
    "Numbers: 3.14159, 2718 and 1,000,000.",
    "  Leading spaces and trailing ones  ",
    "Don't stop; you'll see it's 'quoted' \"twice\".",
]


def english_documents(count: int = 120) -> list:
    """Paragraphs of Python's help topics: real English text, present on every install."""
    import pydoc_data.topics

    paragraphs = []
    for name in sorted(pydoc_data.topics.topics):
        paragraphs += [p.strip("\n") for p in pydoc_data.topics.topics[name].split("\n\n") if len(p.strip()) > 40]
        if len(paragraphs) >= count:
            break
    return paragraphs[:count]


def write_jsonl(path, documents, key="text"):
    with open(path, "w", encoding="utf-8") as f:
        for document in documents:
            f.write(json.dumps({key: document}) + "\n")
    return str(path)
