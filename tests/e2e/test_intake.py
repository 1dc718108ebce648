"""One front door (bot/intake.py): a Remix edit is refused exactly as /imagine refuses the same text,
and several image prompts are refused with a message that says how many are supported — real
discord.py against the emulator, the tiny model."""

from __future__ import annotations

from tests.e2e.harness import bot_settings, running_bot
from tests.e2e.test_prompt_language import jobs_of, png_bytes
from tests.e2e.test_result_workflow import MODAL, answer_of, grid_of, job_id_of


async def imagine_answer(emu, prompt: str, **kwargs) -> str:
    return await answer_of(emu, await emu.invoke_slash("imagine", {"prompt": prompt}, **kwargs))


async def remix_answer(emu, grid, custom_id: str, prompt: str) -> str:
    opened = await emu.click(grid.id, custom_id)
    assert await opened.wait_for_response(3) == MODAL
    return await answer_of(emu, await emu.submit_modal(opened, {"prompt": prompt}))


async def test_a_remix_edit_is_refused_exactly_like_imagine(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", banned_words="badword")
    async with running_bot(settings, emu) as runner:
        bot, user = runner.bot, emu.default_user
        grid = await grid_of(emu, "lighthouse at dusk --seed 3")
        grid_id = job_id_of(grid)
        await bot.accounts.update(user.id, remix=True)
        before = len(await jobs_of(bot))

        # a banned word: one hit each (three in a day would block, which changes the answer)
        expected = await imagine_answer(emu, "a BaDw0rd castle")
        assert "badword" not in expected.lower()
        assert await remix_answer(emu, grid, f"ib:r:{grid_id}", "a BaDw0rd castle") == expected
        for text in ("a castle --model nope", "https://example.com/a.png a castle"):
            expected = await imagine_answer(emu, text)
            for custom_id in (f"ib:r:{grid_id}", f"ib:v:{grid_id}:1"):
                assert await remix_answer(emu, grid, custom_id, text) == expected, (text, custom_id)
        assert len(await jobs_of(bot)) == before  # nothing was queued or charged
    emu.assert_clean()


async def test_several_image_prompts_are_refused_with_the_supported_count(emu, tiny_model_dir, tmp_path):
    settings = bot_settings(emu, tiny_model_dir, tmp_path / "data", image_urls="true")
    async with running_bot(settings, emu) as runner:
        links = "https://example.com/a.png https://example.com/b.png a fox"
        answer = await imagine_answer(emu, links)
        assert "1 image" in answer and "2 links" in answer
        answer = await imagine_answer(
            emu, "https://example.com/a.png a fox", attachments={"image": ("in.png", png_bytes())}
        )
        assert "1 image" in answer and "gives 2" in answer and "1 attachment" in answer
        assert await jobs_of(runner.bot) == []
    emu.assert_clean()
