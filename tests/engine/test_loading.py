import pytest
import torch

from engine.base import EngineError
from engine.loading import img2img_pipeline, load_pipeline, model_family, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_diffusers_folder(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir), "cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32
    assert model_family(pipe) == "sd1"
    img2img = img2img_pipeline(pipe)
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert img2img.unet is pipe.unet and img2img.scheduler is pipe.scheduler


def test_load_single_file_matches_folder(tiny_model_dir, tiny_single_file):
    folder = load_pipeline(str(tiny_model_dir), "cpu")
    single = load_pipeline(str(tiny_single_file), "cpu", config_folder=str(tiny_model_dir))
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(folder, name).state_dict()
        loaded = getattr(single, name).state_dict()
        assert expected.keys() == loaded.keys(), name
        for key, value in expected.items():
            assert torch.equal(value, loaded[key].reshape(value.shape)), (name, key)


def test_single_file_without_configs_offline_is_a_clear_error(tiny_single_file):
    with pytest.raises(EngineError, match="config"):
        load_pipeline(str(tiny_single_file), "cpu")


@pytest.mark.parametrize("source", ["/no/such/model.safetensors", "./missing-folder", "~/nope.ckpt"])
def test_missing_path(source):
    with pytest.raises(EngineError, match="not found"):
        load_pipeline(source, "cpu")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(EngineError, match="model_index.json"):
        load_pipeline(str(tmp_path), "cpu")


def test_bad_checkpoint_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="broken.safetensors"):
        load_pipeline(str(bad), "cpu")


def test_unknown_hub_id_offline():
    with pytest.raises(EngineError, match="could not be found"):
        load_pipeline("imaginebot-tests/no-such-model", "cpu")
