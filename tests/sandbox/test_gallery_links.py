"""The gallery behind signed links, over real HTTP on a real SQLite database: each link opens exactly what
it was signed for, and nothing else."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from PIL import Image

from bot.gallery.links import LinkRefused, LinkSigner
from bot.gallery.server import GalleryLinks, GalleryServer
from bot.gallery.web import GalleryWeb
from storage.db import Database
from storage.images import LocalImageStore
from storage.models import Favourite, Job, JobImage
from storage.states import JobState
from tests.sandbox.http import Client

ALICE, BOB, ADMIN = 1001, 1002, 1003
SECRET = "s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gallery:
    base: str
    links: GalleryLinks
    clock: Clock
    keys: dict[str, str]  # prompt -> the first image key of that job


async def _png(store: LocalImageStore, colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return await store.put(buffer.getvalue())


async def _finished_job(
    database: Database,
    store: LocalImageStore,
    user_id: int,
    prompt: str,
    colour: tuple[int, int, int],
    age: int,
) -> tuple[str, str]:
    key = await _png(store, colour)
    finished = datetime.now(UTC) - timedelta(minutes=age)
    job = Job(
        user_id=user_id,
        prompt=prompt,
        params={"display": f"{prompt} --seed 7"},
        state=JobState.SUCCEEDED,
        model="tiny",
        width=8,
        height=8,
        steps=4,
        seed=7,
        finished_at=finished,
    )
    async with database.sessions() as session:
        session.add(job)
        await session.commit()
        session.add(JobImage(job_id=job.id, index=0, key=key, width=8, height=8, seed=7))
        await session.commit()
    return job.id, key


@pytest_asyncio.fixture
async def gallery(tmp_path) -> AsyncIterator[Gallery]:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalImageStore(tmp_path / "images")
    keys: dict[str, str] = {}
    for user_id, prompt, colour, age in [
        (ALICE, "a red fox in snow", (200, 30, 30), 30),
        (ALICE, "a blue whale", (30, 30, 200), 10),
        (BOB, "bob's green tree", (30, 200, 30), 20),
    ]:
        job_id, keys[prompt] = await _finished_job(database, store, user_id, prompt, colour, age)
        if prompt == "a blue whale":
            async with database.sessions() as session:
                session.add(Favourite(user_id=ALICE, job_id=job_id))
                await session.commit()
    async with database.sessions() as session:  # a queued job for the admin page
        session.add(Job(user_id=BOB, prompt="still waiting", state=JobState.QUEUED))
        await session.commit()
    clock = Clock()
    signer = LinkSigner(SECRET)
    server = GalleryServer(GalleryWeb(database, store, signer=signer, now=clock), "127.0.0.1", 0)
    await server.start()
    port = server.port
    try:
        yield Gallery(
            f"http://127.0.0.1:{port}",
            GalleryLinks(signer, f"http://127.0.0.1:{port}", 60, now=clock),
            clock,
            keys,
        )
    finally:
        await server.stop()
        await database.close()


async def test_a_valid_link_shows_only_that_users_results_newest_first(gallery: Gallery) -> None:
    async with Client() as client:
        page = await client.get(gallery.links.link("user", ALICE))
    assert page.status_code == 200
    assert "a blue whale" in page.text and "a red fox in snow" in page.text
    assert "bob" not in page.text and "still waiting" not in page.text
    assert page.text.index("a blue whale") < page.text.index("a red fox in snow")  # newest first
    items = page.text.split('<div class="item"')[1:]
    assert len(items) == 2
    whale, fox = items
    assert "❤️" in whale and "❤️" not in fox  # the favourite is marked
    assert "seed 7" in page.text and "model tiny" in page.text


async def test_the_filter_and_the_full_size_images_keep_to_the_link(gallery: Gallery) -> None:
    link = gallery.links.link("user", ALICE)
    async with Client() as client:
        filtered = await client.get(link + "&q=FOX")
        own = re.findall(r'href="([^"]+\.png\?[^"]+)"', filtered.text)
        image = await client.get(gallery.base + own[0].replace("&amp;", "&"))
        bobs_key = gallery.keys["bob's green tree"]
        foreign = await client.get(link.replace("?", f"/image/{bobs_key}.png?"))
        unsigned = await client.get(
            f"{gallery.base}/gallery/u/{ALICE}/image/{gallery.keys['a red fox in snow']}.png"
        )
    assert "a red fox in snow" in filtered.text and "a blue whale" not in filtered.text
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).getpixel((0, 0)) == (200, 30, 30)
    assert foreign.status_code == 404  # Bob's image through Alice's link
    assert unsigned.status_code == 403


async def test_a_tampered_link_is_refused(gallery: Gallery) -> None:
    link = gallery.links.link("user", ALICE)
    other_user = link.replace(f"/u/{ALICE}", f"/u/{BOB}")
    sig = re.search(r"sig=([0-9a-f]+)", link)
    assert sig is not None
    flipped = link.replace(sig.group(1), ("0" if sig.group(1)[0] != "0" else "1") + sig.group(1)[1:])
    exp = re.search(r"exp=(\d+)", link)
    assert exp is not None
    longer = link.replace(f"exp={exp.group(1)}", f"exp={int(exp.group(1)) + 3600}")
    async with Client() as client:
        answers = [await client.get(url) for url in (other_user, flipped, longer, link.split("?")[0])]
    for answer in answers:
        assert answer.status_code == 403
        assert "bob" not in answer.text and "a red fox" not in answer.text
    assert "not valid" in answers[0].text and "incomplete" in answers[3].text


async def test_an_expired_link_is_refused(gallery: Gallery) -> None:
    link = gallery.links.link("user", ALICE)
    gallery.clock.now += 60 * 60 + 1
    async with Client() as client:
        answer = await client.get(link)
    assert answer.status_code == 403
    assert "expired" in answer.text and "a red fox" not in answer.text


async def test_the_admin_page_needs_an_admin_link(gallery: Gallery) -> None:
    member_link = gallery.links.link("user", BOB)
    as_admin_page = member_link.replace(f"/u/{BOB}", f"/admin/{BOB}")
    async with Client() as client:
        refused = await client.get(as_admin_page)
        admin = await client.get(gallery.links.link("admin", ADMIN))
        admin_link_as_results = await client.get(
            gallery.links.link("admin", ADMIN).replace(f"/admin/{ADMIN}", f"/u/{ADMIN}")
        )
    assert refused.status_code == 403 and "still waiting" not in refused.text
    assert admin.status_code == 200
    assert "still waiting" in admin.text and "queued" in admin.text  # the queue
    assert "succeeded" in admin.text  # today's jobs by state
    assert admin_link_as_results.status_code == 403


def test_link_signer_rejects_each_kind_of_bad_link() -> None:
    signer = LinkSigner(SECRET)
    expires = 2_000_000_000
    sig = signer.signature("user", ALICE, expires)
    assert signer.verify("user", ALICE, str(expires), sig, now=expires - 1).user_id == ALICE
    for scope, user, exp, signature, now in [
        ("admin", ALICE, str(expires), sig, expires - 1),  # wrong scope
        ("user", BOB, str(expires), sig, expires - 1),  # another user
        ("user", ALICE, str(expires), sig, expires + 1),  # expired
        ("user", ALICE, "12x", sig, 0),  # malformed
        ("user", ALICE, str(expires), None, 0),  # no signature
    ]:
        with pytest.raises(LinkRefused):
            signer.verify(scope, user, exp, signature, now=now)  # type: ignore[arg-type]
    assert LinkSigner("another secret!!").signature("user", ALICE, expires) != sig
