"""Image links in expanded prompts (issue 15 item 16): every permutation is checked."""

from __future__ import annotations

from bot.image_links import (
    LINK_AND_ATTACHMENT,
    LINKS_OFF,
    ONE_LINK,
    image_link_refusal,
    texts_to_moderate,
)
from bot.prompt import expand_permutations, parse_prompt


def expanded(raw: str):
    return [parse_prompt(text) for text in expand_permutations(raw, 40)]


def test_a_link_in_a_later_permutation_is_refused_when_links_are_off():
    prompts = expanded("{cat, https://example.com/x.png dog}")
    assert prompts[0].image_urls == ()  # the first permutation alone looks harmless
    assert image_link_refusal(prompts, links_allowed=False, attachment=False) == LINKS_OFF


def test_permutations_must_share_their_one_link():
    assert (
        image_link_refusal(
            expanded("https://a.example/1.png {cat, dog}"), links_allowed=True, attachment=False
        )
        is None
    )
    mixed = expanded("{https://a.example/1.png cat, dog}")
    assert "same image link" in image_link_refusal(mixed, links_allowed=True, attachment=False)
    different = expanded("{https://a.example/1.png cat, https://b.example/2.png dog}")
    assert "same image link" in image_link_refusal(different, links_allowed=True, attachment=False)
    two = expanded("https://a.example/1.png https://b.example/2.png cat")
    assert image_link_refusal(two, links_allowed=True, attachment=False) == ONE_LINK
    one = expanded("https://a.example/1.png cat")
    assert image_link_refusal(one, links_allowed=True, attachment=True) == LINK_AND_ATTACHMENT


def test_no_links_no_refusal():
    assert image_link_refusal(expanded("{cat, dog}"), links_allowed=False, attachment=True) is None


def test_links_are_moderated_text():
    texts = texts_to_moderate(expanded("{cat, https://example.com/badword.png dog} --no fur"))
    assert "https://example.com/badword.png" in texts and "fur" in texts
