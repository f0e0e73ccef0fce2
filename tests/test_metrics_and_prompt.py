"""Prompt format and metric functions, with exact expected values."""
from ragqa_exp.data import SYSTEM_PROMPT, format_prompt, to_sft_example
from ragqa_exp.metrics import aggregate, clean_prediction, match, normalize


def test_prompt_is_the_study_format_exactly():
    p = format_prompt("日本一高い山は?", ["富士山 富士山は日本一高い山。", "北岳 北岳は二番目。"])
    assert p == (
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n"
        "### 指示:\n日本一高い山は?\n\n"
        "### 入力:\n富士山 富士山は日本一高い山。\n北岳 北岳は二番目。\n\n"
        "### 応答:\n"
    )
    assert p.startswith(SYSTEM_PROMPT)
    assert format_prompt("q?", ["a", "b", "c"], max_passages=2).count("\n### 応答") == 1
    assert "c" not in format_prompt("q?", ["a", "b", "c"], max_passages=2).split("### 入力:\n")[1]


def test_sft_example_is_prompt_completion():
    ex = to_sft_example({"question": "q?", "context": ["x y"], "answer": "富士山"})
    assert ex == {"prompt": format_prompt("q?", ["x y"]), "completion": "富士山"}


def test_normalize():
    assert normalize("『吾輩は猫である』") == "吾輩は猫である"
    assert normalize("「 坂本 真綾 」") == "坂本真綾"
    assert normalize("ＡＢＣ１２３") == "ABC123"  # NFKC full-width → ASCII
    assert normalize("ブリア＝サヴァラン") == "ブリア=サヴァラン"
    assert normalize('"モーニング娘。"') == "モーニング娘。"
    assert normalize("“quoted”") == "quoted"


def test_match_exact_partial_and_normalized():
    assert match("坂本真綾", "坂本真綾") == dict(exact=True, partial=True, exact_normalized=True, partial_normalized=True)
    assert match("声優の坂本真綾です", "坂本真綾") == dict(exact=False, partial=True, exact_normalized=False, partial_normalized=True)
    assert match("『坂本真綾』", "坂本真綾") == dict(exact=False, partial=True, exact_normalized=True, partial_normalized=True)
    assert match("ＮＨＫ", "NHK") == dict(exact=False, partial=False, exact_normalized=True, partial_normalized=True)
    assert match("ブリア=サヴァラン", "ブリア＝サヴァラン") == dict(
        exact=False, partial=False, exact_normalized=True, partial_normalized=True)
    # aliases count only for the normalized variants
    assert match("ユーミン", "松任谷由実", ["松任谷由実", "ユーミン"]) == dict(
        exact=False, partial=False, exact_normalized=True, partial_normalized=True)
    assert match("", "富士山") == dict(exact=False, partial=False, exact_normalized=False, partial_normalized=False)


def test_clean_prediction_cuts_at_first_newline():
    assert clean_prediction(" 富士山\n### 指示: ...") == "富士山"
    assert clean_prediction("\n\n富士山") == "富士山"


def test_aggregate():
    scores = [match("富士山", "富士山"), match("高い富士山", "富士山"), match("北岳", "富士山"), match("『富士山』", "富士山")]
    assert aggregate(scores) == {
        "n": 4, "exact_match": 0.25, "partial_match": 0.75,
        "exact_match_normalized": 0.5, "partial_match_normalized": 0.75,
    }
    assert aggregate([]) == {"n": 0, "exact_match": 0.0, "partial_match": 0.0,
                             "exact_match_normalized": 0.0, "partial_match_normalized": 0.0}
