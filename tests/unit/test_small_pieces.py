import pytest
from PIL import Image

from bot.grid import encode_for_upload, make_grid
from bot.settings import TOKEN_HELP, SettingsError, load_settings
from engine.seeds import tile_seeds
from engine.sizes import size_for_aspect


def test_grid_places_tiles_in_reading_order():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = make_grid([Image.new("RGB", (16, 8), c) for c in colours])
    assert grid.size == (32, 16)
    assert [grid.getpixel(p) for p in [(0, 0), (16, 0), (0, 8), (16, 8)]] == colours


def test_upload_encoding_shrinks_to_the_limit():
    noise = Image.effect_noise((256, 256), 100).convert("RGB")
    data, extension = encode_for_upload(noise)
    assert extension == "png" and data[:4] == b"\x89PNG"
    data, extension = encode_for_upload(noise, limit=20_000)
    assert extension == "jpg" and len(data) <= 20_000


@pytest.mark.parametrize(
    ("resolution", "ratio", "expected"),
    [
        (512, (1, 1), (512, 512)),
        (512, (3, 2), (624, 416)),
        (1024, (16, 9), (1368, 768)),
        (64, (1, 4), (32, 128)),
    ],
)
def test_sizes_keep_the_pixel_count_in_multiples_of_8(resolution, ratio, expected):
    width, height = size_for_aspect(resolution, *ratio)
    assert (width, height) == expected
    assert width % 8 == 0 and height % 8 == 0
    assert abs(width * height - resolution**2) / resolution**2 < 0.1


def test_tile_seeds_wrap_around():
    assert tile_seeds(42, 4) == [42, 43, 44, 45]
    assert tile_seeds(2**32 - 2, 4) == [2**32 - 2, 2**32 - 1, 0, 1]


def test_settings_missing_token_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == TOKEN_HELP


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "abc")
    monkeypatch.setenv("ADMIN_USER_IDS", "1, 2;3")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("MODEL_RESOLUTION", "768")
    settings = load_settings()
    assert settings.admin_user_ids == {1, 2, 3}
    assert settings.model_resolution == 768
    assert settings.resolved_database_url.endswith("/d/imaginebot.db")
    assert "abc" not in repr(settings)


def test_settings_errors_name_the_setting(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "abc")
    monkeypatch.setenv("MODEL_RESOLUTION", "huge")
    monkeypatch.setenv("ADMIN_USER_IDS", "bob")
    monkeypatch.setenv("DEVICE", "tpu")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["MODEL_RESOLUTION", "DEVICE", "ADMIN_USER_IDS"]
