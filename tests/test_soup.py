"""soup.py: averaging fine-tunes of one model into one."""
import numpy as np
import torch

import soup
from checkpoint import load_checkpoint, load_generator, save_checkpoint
from colorizer import Colorizer
from conftest import tiny_checkpoint


def perturbed(src, dst, seed, scale=0.05):
    """A copy of the model at src with noise on its floating-point weights: another 'fine-tune'."""
    ckpt = load_checkpoint(src)
    g = torch.Generator().manual_seed(seed)
    ckpt["netG_ema"] = {k: v + scale * torch.randn(v.shape, generator=g) if k.endswith(("original", "weight", "bias"))
                        else v for k, v in ckpt["netG_ema"].items()}
    save_checkpoint(ckpt, str(dst))
    return str(dst)


def test_soup_of_a_model_with_itself_colorizes_as_it_does(tmp_path):
    model = tiny_checkpoint(tmp_path / "a.pt")
    assert soup.main([str(tmp_path / "s.pt"), model, model]) == 0
    photo = np.random.default_rng(0).integers(0, 256, (40, 56), dtype=np.uint8)
    a = np.asarray(Colorizer.load(model, device="cpu").colorize(photo), np.int16)
    s = np.asarray(Colorizer.load(tmp_path / "s.pt", device="cpu").colorize(photo), np.int16)
    assert np.abs(a - s).max() <= 1  # the soup is stored in float16


def test_soup_averages_the_weights_and_renormalises_spectral_norm(tmp_path):
    a = tiny_checkpoint(tmp_path / "a.pt")
    b = perturbed(a, tmp_path / "b.pt", seed=1)
    c = perturbed(a, tmp_path / "c.pt", seed=2)
    netG, ckpts = soup.soup_state([a, b, c])
    state = netG.state_dict()
    key = next(k for k in state if k.endswith("parametrizations.weight.original"))
    mean = sum(ck["netG_ema"][key] for ck in ckpts) / 3
    assert torch.allclose(state[key], mean, atol=1e-6)
    # the weight the network uses is the averaged one divided by its true largest singular value
    module = netG.get_submodule(key.rsplit(".parametrizations", 1)[0])
    sigma = torch.linalg.matrix_norm(mean.flatten(1), ord=2)
    assert torch.allclose(module.weight, mean / sigma, rtol=1e-3, atol=1e-6)
    # and the file soup.main writes loads as a generator
    assert soup.main([str(tmp_path / "s.pt"), a, b, c, "--about", "three fine-tunes"]) == 0
    assert load_checkpoint(str(tmp_path / "s.pt"))["about"] == "three fine-tunes"
    load_generator(str(tmp_path / "s.pt"), torch.device("cpu"))


def test_soup_refuses_different_networks_and_single_models(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt")
    wide = tiny_checkpoint(tmp_path / "wide.pt", NGF=16)
    assert soup.main([str(tmp_path / "s.pt"), a, wide]) == 2
    err = capsys.readouterr().err
    assert "wide.pt" in err and "NGF" in err
    assert soup.main([str(tmp_path / "s.pt"), a]) == 2
    assert "at least two" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


def test_soup_names_a_missing_file(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt")
    assert soup.main([str(tmp_path / "s.pt"), a, str(tmp_path / "nowhere.pt")]) == 2
    assert "nowhere.pt" in capsys.readouterr().err
