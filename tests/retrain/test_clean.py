"""Length filters, the per-user share and the absolute caps on untrusted rows, on plain Example lists."""

from __future__ import annotations

from collections import Counter

from retrain.clean import (
    Example,
    cap_untrusted,
    cap_user_share,
    drop_empty,
    drop_long,
    drop_short,
    estimate_tokens,
    normalise,
)


def ex(answer="a fine answer", user="u", question="what?", sid=None, replay=False, **kw) -> Example:
    return Example(prompt=[{"role": "system", "content": "sys"}, {"role": "user", "content": question}],
                   completion=answer, user=user, conversation_id=f"c-{sid or answer}", source_id=sid or answer,
                   replay=replay, **kw)


def test_empty_and_short():
    rows = [ex(""), ex("   "), ex("ok", question="  "), ex("x"), ex("ok"), ex("fine", rejected="")]
    non_empty = drop_empty(rows)
    assert [e.completion for e in non_empty] == ["x", "ok"]
    assert [e.completion for e in drop_short(non_empty, 2)] == ["ok"]


def test_long_uses_the_given_counter():
    rows = [ex("word " * 10), ex("word " * 100)]
    assert len(drop_long(rows, 50)) == 1  # default word estimate
    by_chars = drop_long(rows, 60, count_tokens=len)
    assert [len(e.completion) for e in by_chars] == [50]
    assert estimate_tokens("one two three") == 4


def test_user_cap_limits_share_deterministically():
    rows = [ex(f"a{i}", user="heavy", sid=f"h{i}") for i in range(80)]
    rows += [ex(f"b{i}", user=f"light{i % 4}", sid=f"l{i}") for i in range(20)]
    kept = cap_user_share(rows, 0.5)
    per_user = Counter(e.user for e in kept)
    assert per_user["heavy"] <= 0.5 * len(kept)
    assert per_user["heavy"] == 20  # as many as all others together
    assert all(per_user[f"light{i}"] == 5 for i in range(4))
    # Which rows go depends on the rows, not on their order.
    assert {e.source_id for e in kept} == {e.source_id for e in cap_user_share(rows[::-1], 0.5)}


def test_user_cap_spares_a_single_user_and_counts_replay():
    solo = [ex(f"a{i}", user="only", sid=f"s{i}") for i in range(10)]
    assert cap_user_share(solo, 0.5) == solo
    replay = [ex(f"r{i}", user="", sid=f"r{i}", replay=True) for i in range(4)]
    kept = cap_user_share(replay + solo, 0.5)
    assert sum(e.replay for e in kept) == 4
    assert sum(not e.replay for e in kept) == 4  # 4 <= 0.5 * (4 + 4)


def test_user_share_never_drops_trusted_rows():
    admin = [ex(f"t{i}", user="root", sid=f"t{i}", trusted=True) for i in range(60)]
    other = [ex(f"o{i}", user="ann", sid=f"o{i}") for i in range(40)]
    kept = cap_user_share(admin + other, 0.5)
    assert sum(e.trusted for e in kept) == 60  # the admin's lesson trains whole
    assert sum(not e.trusted for e in kept) == 40  # ann: 40 <= 0.5 * 100


FALSE_FACT = "The Zorbian anthem was written by a cat."


def test_untrusted_caps_hold_for_a_sole_contributor():
    # One user, the only contributor: 200 corrections drilling one sentence, plus 100 varied answers.
    drilled = [ex(FALSE_FACT, user="mallory", question=f"Who wrote it, take {i}?", sid=f"d{i}") for i in range(200)]
    varied = [ex(f"answer {i}", user="mallory", sid=f"v{i}") for i in range(100)]
    kept = cap_untrusted(drilled + varied, max_per_user=50, max_per_answer=5)
    assert sum(e.completion == FALSE_FACT for e in kept) == 5
    assert len(kept) == 50 and all(e.user == "mallory" for e in kept)
    # The answer cap counts normalised text: case and spacing do not make a new answer.
    shouted = [ex(FALSE_FACT.upper().replace(" ", "  "), user=f"u{i}", sid=f"s{i}") for i in range(10)]
    assert len(cap_untrusted(drilled[:10] + shouted, max_per_user=50, max_per_answer=5)) == 5
    assert {e.source_id for e in kept} == {e.source_id for e in cap_untrusted((drilled + varied)[::-1], 50, 5)}


def test_trusted_and_replayed_rows_are_not_capped():
    lesson = [ex(FALSE_FACT.replace("a cat", "Ada"), user="root", question=f"q{i}?", sid=f"a{i}", trusted=True)
              for i in range(60)]
    replay = [ex("old", user="", sid=f"r{i}", replay=True) for i in range(20)]
    assert cap_untrusted(lesson + replay, max_per_user=5, max_per_answer=1) == lesson + replay
    rows = [ex(FALSE_FACT, user="m", sid=f"x{i}") for i in range(30)]
    assert cap_untrusted(rows, 0, 0) == rows  # 0 turns the caps off


def test_invisible_variants_of_one_answer_share_the_answer_cap():
    # Format characters (Unicode Cf: zero-width space, word joiner, BOM) show nothing, so they make no new answer.
    marks = ("\u200b", "\u2060", "\ufeff", "\u00ad")
    variants = [ex(FALSE_FACT.replace(" ", f" {marks[i % 4]}" * (i // 4 + 1), 1) + marks[i % 4] * i, user="mallory",
                   question=f"q{i}?", sid=f"v{i}") for i in range(20)]
    assert len({e.completion for e in variants}) == 20
    assert len(cap_untrusted(variants, max_per_user=50, max_per_answer=5)) == 5
    assert normalise("Zero\u200bwidth\u2060 Joiner\ufeff") == normalise("zerowidth joiner")
    # Confusables are not folded (no table in the standard library): a Cyrillic "а" is another answer.
    assert normalise("P\u0430ris") != normalise("Paris")


def test_an_answer_of_format_characters_only_is_empty():
    assert drop_empty([ex("\u200b\u2060"), ex(" \ufeff "), ex("ok")]) == [ex("ok")]
