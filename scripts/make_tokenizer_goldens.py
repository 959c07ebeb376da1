"""Hugging Face's GPT-2 tokenizer on a real corpus: tests/goldens/tokenizer/corpus.json.

Each text is stored with the ids Hugging Face's tokenizer gives it, so that nexttoken's
(tiktoken-rs) is compared id for id without Python at test time: The Verdict and the first
40,000 characters of Tiny Shakespeare (../shared/corpus), the Apache and MIT licences as a crate
ships them, Rust and Python source from this repository as it was when the goldens were made,
and a set of hand-picked strings (whitespace runs, newlines, contractions, digits, emoji,
mixed scripts) where byte-level BPE's pre-tokenizer has its corner cases.

    python scripts/make_tokenizer_goldens.py --corpus ../shared/corpus
"""

import argparse
import json
from pathlib import Path

import transformers

from common import ROOT, gpt2_tokenizer, registry_crate

FORMAT_VERSION = 1

EDGE_CASES = {
    "whitespace runs": "a  b   c    d\t\te \t \tf\n\n\ng\r\n\r\nh   \n   i      ",
    "leading and trailing space": "   leading, and trailing   ",
    "only spaces": "      ",
    "newlines": "\n\n\nline\nline\n\n  \n\t\n",
    "contractions": "I'm, you're, he's, we've, they'd, she'll, can't, won't, y'all, 'tis, "
                    "I'M, YOU'RE, HE'S, WE'VE, THEY'D, SHE'LL, CAN'T, rock'n'roll, o'clock",
    "quotes and apostrophes": "'quoted' \"double\" ‘curly’ “curly” '' ''' 's 't 're",
    "digits": "0 1 12 123 1234 12345 123456 3.14159 2,718,281 1e-10 0x1F 007 ½ ² ٣ 四",
    "punctuation runs": "...!!!???---___***///\\\\|||~~~```$$$%%%^^^&&&@@@###",
    "emoji": "🦀🚀 👩‍👩‍👧‍👦 👍🏽 🇯🇵 ❤️ ☃ 🏳️‍🌈 😀😃😄😁",
    "mixed scripts": "English, Ελληνικά, Русский, עברית, العربية, हिन्दी, বাংলা, ไทย, "
                     "한국어, 日本語, 中文, ქართული, Հայերեն, አማርኛ",
    "combining marks": "e\u0301 n\u0303 a\u0308\u0301 Z\u0351\u0352\u0353 क्षि",
    "code": "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
    "urls and paths": "https://huggingface.co/openai-community/gpt2?x=1&y=2#z /usr/lib/x86_64-linux-gnu",
    "control characters": "bell\x07 escape\x1b[0m nul-free\x7f tab\tvertical\x0bform\x0c",
    "rare unicode": "\u00a0nbsp \u2028line sep \u200bzero width \ufeffbom \U0001d54f\U0001d552",
}


def texts(corpus: Path):
    yield "the-verdict.txt", (corpus / "the-verdict.txt").read_text()
    yield "tinyshakespeare.txt[:40000]", (corpus / "tinyshakespeare.txt").read_text()[:40000]
    regex = registry_crate("regex")
    for licence in ["LICENSE-APACHE", "LICENSE-MIT"]:
        yield f"regex/{licence}", (regex / licence).read_text()
    for source in ["crates/nexttoken-cpu/src/attention.rs", "crates/nexttoken-generate/src/sampler.rs",
                   "scripts/make_fixtures.py", "scripts/common.py"]:
        yield source, (ROOT / source).read_text()
    yield from EDGE_CASES.items()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = gpt2_tokenizer()
    tokenizer.model_max_length = 10**9  # no warning on long texts: nothing is cut
    cases = []
    for name, text in texts(args.corpus):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text, f"{name}: Hugging Face does not round-trip it"
        cases.append({"name": name, "text": text, "ids": ids})
    out = ROOT / "tests" / "goldens" / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format_version": FORMAT_VERSION, "transformers": transformers.__version__,
           "cases": cases}
    (out / "corpus.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n")
    tokens = sum(len(case["ids"]) for case in cases)
    print(f"wrote tests/goldens/tokenizer/corpus.json: {len(cases)} texts, {tokens} ids")


if __name__ == "__main__":
    main()
