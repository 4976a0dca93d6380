"""Preprocessing: captions / VQA / paired JSONL -> txt_db; stored values, summaries, errors, atomicity."""
import json
import os
import sys
from pathlib import Path

import lz4.frame
import msgpack
import pytest

import prepro as prepro_cli
from utils.errors import DataError
from data.lmdb_env import open_lmdb
from data.prepro import (build_ans2label, build_caption_dbs, build_paired_db, build_vqa_db, load_img_names,
                         normalize_answer, vqa_soft_score, vqa_target)
from data.tokenizer import load_tokenizer
from data.txt_db import TxtDb
from tests.helpers import make_tiny_tokenizer, write_jsonl, write_lines

CAPTIONS = [
    {"id": "c0", "img_fname": "img0.npz", "lang": "en", "caption": "a man is riding a horse"},
    {"id": 1, "img_fname": "img0.npz", "lang": "ja", "caption": "男性が馬に乗っている"},
    {"id": "c2", "img_fname": "img1.npz", "lang": "en", "caption": "two dogs play in the park"},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(make_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _leftovers(folder: Path) -> list[str]:
    """Everything in ``folder`` except the inputs a test wrote (*.jsonl, *.align, *.json)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix not in {".jsonl", ".align", ".json"})


def _raw_value(db_dir: Path, key: str) -> dict:
    """Decode a stored value the way the original reader does (int map keys allowed)."""
    with open_lmdb(db_dir).begin() as txn:
        data = txn.get(key.encode())
    return msgpack.unpackb(lz4.frame.decompress(data), raw=False, strict_map_key=False)


# ---------------------------------------------------------------------------------------------- captions
def test_captions_one_db_per_language_with_values_and_side_files(tok, tmp_path):
    src = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)
    summary = build_caption_dbs(src, tmp_path / "out", tok, "train", max_txt_len=6, progress=False)
    assert sorted(summary["outputs"]) == ["en", "ja"]
    en = TxtDb(tmp_path / "out" / "train_en.db")
    assert en.ids == ["c0", "c2"]
    assert en["c0"] == {"input_ids": tok.encode("a man is riding a horse"), "img_fname": "img0.npz",
                        "raw": "a man is riding a horse", "lang": "en"}
    assert en.meta["CLS"] == 0 and en.meta["SEP"] == 2 and en.meta["MASK"] == tok.mask_id
    assert en.meta["v_range"] == [4, tok.mask_id] and en.meta["lang"] == "en"
    assert en.id2len == {"c0": len(tok.encode(CAPTIONS[0]["caption"])), "c2": len(tok.encode(CAPTIONS[2]["caption"]))}
    assert en.img2txts == {"img0.npz": ["c0"], "img1.npz": ["c2"]}
    ja = TxtDb(tmp_path / "out" / "train_ja.db")
    assert ja.ids == ["1"] and tok.decode(ja["1"]["input_ids"]) == "男性が馬に乗っている"
    lens = [len(tok.encode(c["caption"])) for c in CAPTIONS]
    assert summary["written"] == 3 and summary["tokens_max"] == max(lens)
    assert summary["tokens_mean"] == round(sum(lens) / 3, 2)
    assert summary["over_max_txt_len"] == sum(n > 6 for n in lens) > 0


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "x", "img_fname": "a.npz", "lang": "en", ', r"caps\.jsonl, line 3: malformed JSON"),
    ('{"id": "x", "img_fname": "a.npz", "lang": "en"}', r"caps\.jsonl, line 3: missing field 'caption'"),
    ('{"id": "x", "img_fname": "a.npz", "lang": "en", "caption": "  "}',
     r"caps\.jsonl, line 3: field 'caption' is empty"),
    ('{"id": "c0", "img_fname": "a.npz", "lang": "en", "caption": "dog"}',
     r"caps\.jsonl, line 3: duplicate example id 'c0'"),
    ('[1, 2]', r"caps\.jsonl, line 3: expected a JSON object"),
    ('{"id": "x", "img_fname": "a.npz", "lang": "../en", "caption": "dog"}',
     r"line 3: field 'lang' must be a language code"),
    ('{"id": "x", "img_fname": 5, "lang": "en", "caption": "dog"}', r"line 3: field 'img_fname' must be a string"),
])
def test_caption_errors_name_file_and_line_and_leave_nothing(tok, tmp_path, bad_line, message):
    src = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS[:2] + [bad_line])
    with pytest.raises(DataError, match=message):
        build_caption_dbs(src, tmp_path, tok, "train", progress=False)
    assert _leftovers(tmp_path) == []


def test_caption_fields_cover_the_original_example(tok, tmp_path, orig_fixtures):
    original = _raw_value(orig_fixtures / "txt_db" / "demo.db", "0")
    build_caption_dbs(write_jsonl(tmp_path / "caps.jsonl", CAPTIONS), tmp_path, tok, "s", progress=False)
    ours = _raw_value(tmp_path / "s_en.db", "c0")
    assert set(original) <= set(ours) and isinstance(ours["raw"], str)
    original_meta = json.loads((orig_fixtures / "txt_db" / "demo.db" / "meta.json").read_text())
    assert set(original_meta) <= set(json.loads((tmp_path / "s_en.db" / "meta.json").read_text()))


def test_invalid_utf8_names_the_line_and_a_bom_is_accepted(tok, tmp_path):
    src = tmp_path / "caps.jsonl"
    good = json.dumps(CAPTIONS[0]).encode()
    src.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good.replace(b"horse", b"h\xffrse") + b"\n")
    with pytest.raises(DataError, match=r"caps\.jsonl, line 2: not valid UTF-8"):
        build_caption_dbs(src, tmp_path, tok, "s", progress=False)
    src.write_bytes(b"\xef\xbb\xbf" + good + b"\n")
    assert build_caption_dbs(src, tmp_path, tok, "s", progress=False)["written"] == 1


def test_empty_captions_can_be_dropped_and_counted(tok, tmp_path):
    rows = CAPTIONS + [{"id": "e", "img_fname": "img0.npz", "lang": "en", "caption": ""}]
    summary = build_caption_dbs(write_jsonl(tmp_path / "caps.jsonl", rows), tmp_path / "o", tok, "s",
                                drop_empty=True, progress=False)
    assert summary["written"] == 3 and summary["dropped"] == {"empty caption": 1}


def test_existing_output_is_refused_unless_overwrite(tok, tmp_path):
    src = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)
    build_caption_dbs(src, tmp_path / "o", tok, "s", progress=False)
    with pytest.raises(DataError, match="already exists"):
        build_caption_dbs(src, tmp_path / "o", tok, "s", progress=False)
    assert build_caption_dbs(src, tmp_path / "o", tok, "s", overwrite=True, progress=False)["written"] == 3


def test_img_db_check_with_nbb_json(tok, tmp_path):
    img_db = tmp_path / "imgs"
    img_db.mkdir()
    (img_db / "nbb_th0.2_max100_min10.json").write_text(json.dumps({"img0.npz": 10}))
    src = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)
    with pytest.raises(DataError, match=r"caps\.jsonl, line 3: image 'img1\.npz' is not in img_db"):
        build_caption_dbs(src, tmp_path / "o", tok, "s", img_db=img_db, progress=False)
    assert not (tmp_path / "o").exists() or _leftovers(tmp_path / "o") == []
    summary = build_caption_dbs(src, tmp_path / "o", tok, "s", img_db=img_db, drop_unknown_images=True,
                                progress=False)
    assert summary["written"] == 2 and summary["dropped"] == {"image not in img_db": 1}


def test_img_names_from_lmdb_keys(tmp_path, orig_fixtures):
    feat_dir = orig_fixtures / "img_db" / "demo_imgs" / "feat_th0.2_max100_min10"
    # Copy only the LMDB (no nbb json) so the __keys__ path is the one exercised.
    (tmp_path / "db" / "feat").mkdir(parents=True)
    for name in ("data.mdb",):
        (tmp_path / "db" / "feat" / name).write_bytes((feat_dir / name).read_bytes())
    assert load_img_names(tmp_path / "db") == {f"demo_imgs_00000{i}.npz" for i in range(3)}
    with pytest.raises(DataError, match="no nbb_"):
        load_img_names(tmp_path / "db" / "feat")


# --------------------------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize("count, score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_score(count, score):
    assert vqa_soft_score(count) == score


def test_normalize_answer():
    assert normalize_answer("  Two   Dogs. ") == "two dogs"
    assert normalize_answer("Yes!?") == "yes"
    assert normalize_answer("3.5") == "3.5"


def test_ans2label_top_k_by_frequency_with_deterministic_ties():
    answer_lists = [["yes", "no", "Red"], ["yes", "red", "blue"], ["cat", "yes"]]
    assert build_ans2label(answer_lists, top_k=3) == {"yes": 0, "red": 1, "blue": 2}  # blue < cat < no
    assert list(build_ans2label(answer_lists, top_k=10)) == ["yes", "red", "blue", "cat", "no"]


def test_vqa_target_soft_scores_sorted_by_label():
    ans2label = {"yes": 0, "no": 1, "two": 2}
    answers = ["two"] * 3 + ["no"] + ["zebra"] * 6
    assert vqa_target(answers, ans2label) == {"labels": [1, 2], "scores": [0.3, 0.9]}


VQA_ROWS = [
    {"question_id": 11, "img_fname": "i0.npz", "lang": "en", "question": "is it a dog?",
     "answers": ["yes"] * 8 + ["Yes.", "no"]},
    {"question_id": 12, "img_fname": "i0.npz", "lang": "en", "question": "what color?",
     "answers": ["red", "red", "blue"]},
    {"question_id": 13, "img_fname": "i1.npz", "lang": "en", "question": "how many?", "answers": ["seven"]},
    {"question_id": 14, "img_fname": "i1.npz", "lang": "en", "question": "where?", "answers": []},
]


def test_vqa_db_targets_vocab_and_counts(tok, tmp_path):
    src = write_jsonl(tmp_path / "vqa.jsonl", VQA_ROWS)
    summary = build_vqa_db(src, tmp_path / "vqa.db", tok, top_k=3, progress=False)
    ans2label = json.loads((tmp_path / "vqa.db" / "ans2label.json").read_text())
    assert ans2label == {"yes": 0, "red": 1, "blue": 2}  # seven and no (1 each) tie with blue; blue sorts first
    assert json.loads((tmp_path / "vqa.db" / "label2ans.json").read_text()) == ["yes", "red", "blue"]
    db = TxtDb(tmp_path / "vqa.db")
    first = db["11"]
    assert first["target"] == {"labels": [0], "scores": [1.0]}
    assert first["input_ids"] == tok.encode("is it a dog?") and first["question_id"] == "11"
    assert db["12"]["target"] == {"labels": [1, 2], "scores": [0.6, 0.3]}
    assert db["13"]["target"] == {"labels": [], "scores": []}  # kept, counted below
    assert summary["written"] == 4 and summary["no_answer_in_vocab"] == 1 and summary["no_answers"] == 1


def test_vqa_given_ans2label_file(tok, tmp_path):
    (tmp_path / "a2l.json").write_text(json.dumps({"Seven": 0, "yes": 1}))
    src = write_jsonl(tmp_path / "vqa.jsonl", VQA_ROWS)
    summary = build_vqa_db(src, tmp_path / "vqa.db", tok, ans2label=tmp_path / "a2l.json", progress=False)
    db = TxtDb(tmp_path / "vqa.db")
    assert db["13"]["target"] == {"labels": [0], "scores": [0.3]}
    assert summary["num_answers"] == 2 and summary["no_answer_in_vocab"] == 1  # question 12


@pytest.mark.parametrize("content, message", [
    ('{"yes": 0, "no": 0}', r"labels must be 0\.\.1"), ('["yes"]', "expected a JSON object"),
    ('{"yes": 0, "Yes.": 1}', "both normalise to 'yes'"), ('{"yes": ', "malformed JSON"),
])
def test_vqa_bad_ans2label_file(tok, tmp_path, content, message):
    (tmp_path / "a2l.json").write_text(content)
    src = write_jsonl(tmp_path / "vqa.jsonl", VQA_ROWS)
    with pytest.raises(DataError, match=message):
        build_vqa_db(src, tmp_path / "vqa.db", tok, ans2label=tmp_path / "a2l.json", progress=False)
    assert _leftovers(tmp_path) == []


def test_nothing_left_to_write_is_an_error(tok, tmp_path):
    rows = [{**row, "question": " "} for row in VQA_ROWS]
    with pytest.raises(DataError, match=r"vqa\.jsonl: no example left to write \(4 empty question\)"):
        build_vqa_db(write_jsonl(tmp_path / "vqa.jsonl", rows), tmp_path / "vqa.db", tok, drop_empty=True,
                     progress=False)
    assert _leftovers(tmp_path) == []


def test_vqa_bad_answers_field_names_line_before_writing(tok, tmp_path):
    rows = VQA_ROWS[:2] + [{**VQA_ROWS[2], "answers": "seven"}]
    with pytest.raises(DataError, match=r"vqa\.jsonl, line 3: field 'answers' must be a list of strings"):
        build_vqa_db(write_jsonl(tmp_path / "vqa.jsonl", rows), tmp_path / "vqa.db", tok, progress=False)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------ paired
PAIRED = [
    {"id": "p0", "img_fname": "i0.npz", "lang1": "en", "lang2": "de",
     "caption1": "a man riding a horse", "caption2": "ein Mann reitet ein Pferd"},
    {"id": "p1", "img_fname": "i1.npz", "lang1": "en", "lang2": "ja",
     "caption1": "a dog on the beach", "caption2": "犬 が 浜辺 に いる"},
]
ALIGN = ["0-0 1-1 2-2 3-3 4-4", "1-0 4-2 3-3 4-3"]


def test_paired_db_values(tok, tmp_path):
    src, align = write_jsonl(tmp_path / "p.jsonl", PAIRED), write_lines(tmp_path / "p.align", ALIGN)
    summary = build_paired_db(src, align, tmp_path / "p.db", tok, progress=False)
    db = TxtDb(tmp_path / "p.db")
    for row in PAIRED:
        ex = db[row["id"]]
        assert ex["input_ids"] == ex["input_ids_lang1"] + [2, 0] + ex["input_ids_lang2"]
        assert db.id2len[row["id"]] == len(ex["input_ids"])
        for side, caption in (("lang1", row["caption1"]), ("lang2", row["caption2"])):
            ids, word2ids = ex[f"input_ids_{side}"], ex[f"word2ids_{side}"]
            assert len(word2ids) == len(caption.split())
            assert [i for positions in word2ids for i in positions] == list(range(len(ids)))
        assert ex["lang1"] == "en" and ex["lang2"] == row["lang2"]
    assert db["p0"]["input_ids_lang1"] == tok.encode("a man riding a horse")
    assert tok.decode(db["p1"]["input_ids_lang2"]) == "犬が浜辺にいる"  # ja joined without spaces
    assert _raw_value(tmp_path / "p.db", "p1")["lang1_lang2_walign"] == {1: [0], 3: [3], 4: [2, 3]}
    assert summary["written"] == 2


def test_paired_fields_cover_the_original_example(tok, tmp_path, orig_fixtures):
    original = _raw_value(orig_fixtures / "txt_db" / "demo.db", "p0")
    build_paired_db(write_jsonl(tmp_path / "p.jsonl", PAIRED), write_lines(tmp_path / "p.align", ALIGN),
                    tmp_path / "p.db", tok, progress=False)
    ours = _raw_value(tmp_path / "p.db", "p0")
    assert set(original) <= set(ours)
    assert all(isinstance(k, int) for k in ours["lang1_lang2_walign"]) and \
        all(isinstance(k, int) for k in original["lang1_lang2_walign"])


@pytest.mark.parametrize("align_lines, message", [
    (ALIGN[:1], r"p\.align has 1 alignment lines but .*p\.jsonl has 2 JSON lines"),
    ([ALIGN[0], "0-0 5-1"], r"p\.align, line 2 \(alignment of .*p\.jsonl, line 2\): alignment pair 5-1 is out "
                            r"of range: caption1 has 5 words, caption2 has 5"),
    (["0-0 1:1", ALIGN[1]], r"p\.align, line 1 .*malformed alignment pair '1:1'"),
    (["0-0 -1-2", ALIGN[1]], r"malformed alignment pair '-1-2'"),
])
def test_paired_alignment_errors(tok, tmp_path, align_lines, message):
    src, align = write_jsonl(tmp_path / "p.jsonl", PAIRED), write_lines(tmp_path / "p.align", align_lines)
    with pytest.raises(DataError, match=message):
        build_paired_db(src, align, tmp_path / "p.db", tok, progress=False)
    assert _leftovers(tmp_path) == []


def test_paired_missing_field_names_it(tok, tmp_path):
    rows = [PAIRED[0], {k: v for k, v in PAIRED[1].items() if k != "lang2"}]
    with pytest.raises(DataError, match=r"p\.jsonl, line 2: missing field 'lang2'"):
        build_paired_db(write_jsonl(tmp_path / "p.jsonl", rows), write_lines(tmp_path / "p.align", ALIGN),
                        tmp_path / "p.db", tok, progress=False)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_captions_prints_summary_and_writes_json(tok, tmp_path, capsys):
    src = write_jsonl(tmp_path / "caps.jsonl", CAPTIONS)
    rc = prepro_cli.main(["captions", "--input", str(src), "--output", str(tmp_path / "out"), "--tokenizer",
                          str(tok.path), "--no_progress", "--summary_json", str(tmp_path / "sum.json")])
    assert rc == 0
    assert "wrote 3 examples" in capsys.readouterr().out
    assert (tmp_path / "out" / "caps_en.db").is_dir() and (tmp_path / "out" / "caps_ja.db").is_dir()
    assert json.loads((tmp_path / "sum.json").read_text())["written"] == 3


def test_cli_vqa_wires_num_answers_and_ans2label(tok, tmp_path, capsys):
    src = write_jsonl(tmp_path / "vqa.jsonl", VQA_ROWS)
    base = ["vqa", "--input", str(src), "--tokenizer", str(tok.path), "--no_progress"]
    assert prepro_cli.main(base + ["--output", str(tmp_path / "train.db"), "--num_answers", "2"]) == 0
    assert json.loads((tmp_path / "train.db" / "label2ans.json").read_text()) == ["yes", "red"]
    assert prepro_cli.main(base + ["--output", str(tmp_path / "val.db"), "--ans2label",
                                   str(tmp_path / "train.db" / "ans2label.json")]) == 0
    assert TxtDb(tmp_path / "val.db")["12"]["target"] == {"labels": [1], "scores": [0.6]}
    assert "no_answer_in_vocab: 1" in capsys.readouterr().out  # question 13 ("seven")


def test_cli_reports_data_errors_without_traceback(tok, tmp_path, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", PAIRED)
    write_lines(tmp_path / "p.align", ALIGN[:1])
    rc = prepro_cli.main(["paired", "--input", str(src), "--align", str(tmp_path / "p.align"), "--output",
                          str(tmp_path / "p.db"), "--tokenizer", str(tok.path), "--no_progress"])
    assert rc == 2
    assert "1 alignment lines" in capsys.readouterr().err
    assert not (tmp_path / "p.db").exists()


# ---------------------------------------------------------------------------------------- align_words.py
def test_aligner_input_lowercases_and_skips_empty_sides(tmp_path):
    from scripts.align_words import build_aligner_input

    rows = PAIRED + [{**PAIRED[0], "id": "p2", "caption2": " "}]
    lines, index = build_aligner_input(write_jsonl(tmp_path / "p.jsonl", rows))
    assert lines == ["a man riding a horse ||| ein mann reitet ein pferd", "a dog on the beach ||| 犬 が 浜辺 に いる"]
    assert index == [0, 1]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**PAIRED[0], "caption1": "a ||| b"}])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1: captions may not contain '\|\|\|'"):
        build_aligner_input(bad)


def test_aligner_output_parsing_and_symmetrisation():
    from scripts.align_words import format_pharaoh, grow_diag_final_and, parse_alignments

    fwd, rev = parse_alignments(["0-0 1-1 2-1", "0-0 1-2 2-2"], 2, "fwd")[0], {(0, 0), (1, 1), (2, 2)}
    # Intersection {0-0, 1-1}; 2-1 and 2-2 neighbour 1-1 and source word 2 is unaligned: the first one
    # visited (2-1, sorted order of the diagonal search) is added, then 2-2 still has target 2 unaligned.
    assert format_pharaoh(grow_diag_final_and(fwd, rev)) == "0-0 1-1 2-1 2-2"
    assert grow_diag_final_and({(0, 3)}, {(1, 0)}) == {(0, 3), (1, 0)}  # final-and: both ends unaligned
    assert grow_diag_final_and({(0, 0), (0, 1)}, {(0, 0), (1, 1)}) == {(0, 0), (0, 1), (1, 1)}
    with pytest.raises(DataError, match="fwd: aligner wrote 2 lines, expected 3"):
        parse_alignments(["0-0", "1-1"], 3, "fwd")
    with pytest.raises(DataError, match=r"fwd, line 2: malformed alignment pair 'x'"):
        parse_alignments(["0-0", "x"], 2, "fwd")


_FAKE_ALIGNER = """#!{python}
# Stand-in aligner: aligns word k to word k. fast_align writes to stdout; eflomal-align to -f/-r files.
import sys
args = sys.argv[1:]
lines = open(args[args.index("-i") + 1], encoding="utf-8").read().splitlines()
out = []
for line in lines:
    src, tgt = line.split(" ||| ")
    out.append(" ".join(f"{{k}}-{{k}}" for k in range(min(len(src.split()), len(tgt.split())))))
text = "".join(o + "\\n" for o in out)
if "-f" in args:
    for flag in ("-f", "-r"):
        open(args[args.index(flag) + 1], "w", encoding="utf-8").write(text)
else:
    sys.stdout.write(text)
"""


@pytest.mark.parametrize("aligner", ["fast_align", "eflomal-align"])
def test_align_words_with_a_stand_in_aligner(tok, tmp_path, monkeypatch, aligner):
    """Drives the subprocess plumbing of both aligner interfaces with a fake executable on PATH."""
    from scripts.align_words import main

    fake = tmp_path / "bin" / aligner
    fake.parent.mkdir()
    fake.write_text(_FAKE_ALIGNER.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    rows = PAIRED + [{**PAIRED[0], "id": "p2", "caption2": ""}]
    src, out = write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "p.align"
    assert main(["--input", str(src), "--output", str(out), "--aligner", aligner]) == 0
    assert out.read_text().splitlines() == ["0-0 1-1 2-2 3-3 4-4", "0-0 1-1 2-2 3-3 4-4", ""]
    summary = build_paired_db(src, out, tmp_path / "p.db", tok, drop_empty=True, progress=False)
    assert summary["written"] == 2 and summary["dropped"] == {"empty caption2": 1}


def test_align_words_without_aligner_says_how_to_install(tmp_path, monkeypatch, capsys):
    from scripts.align_words import main

    monkeypatch.setenv("PATH", str(tmp_path))
    src = write_jsonl(tmp_path / "p.jsonl", PAIRED)
    assert main(["--input", str(src), "--output", str(tmp_path / "p.align")]) == 3
    assert "pip install systran-align" in capsys.readouterr().err
    assert not (tmp_path / "p.align").exists()


def test_align_words_real_aligner(tok, tmp_path):
    from scripts.align_words import find_aligner, main

    if find_aligner() is None:
        pytest.skip("no fast_align / eflomal-align on PATH: real-aligner run skipped (pip install systran-align)")
    rows = [{**row, "id": f"{row['id']}_{k}"} for k in range(3) for row in PAIRED]
    src, out = write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "p.align"
    assert main(["--input", str(src), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 6
    summary = build_paired_db(src, out, tmp_path / "p.db", tok, progress=False)
    assert summary["written"] == 6
