"""The forward process, the schedules, DDPM/DDIM sampling and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch

from engine.vision.config import UNetConfig
from engine.vision.data import VisionInputError
from engine.vision.diffusion import (
    GaussianDiffusion,
    classifier_free_guidance,
    cosine_betas,
    linear_betas,
)
from engine.vision.unet import UNet


def noisy_unet(seed: int = 0) -> UNet:
    """A small U-Net whose zero-initialised output layers are randomised, so it predicts
    non-trivial noise (an untouched one predicts exactly zero)."""
    torch.manual_seed(seed)
    net = UNet(UNetConfig(base_channels=16, channel_mults=[1, 2], attention=False))
    with torch.no_grad():
        for param in net.parameters():
            if param.abs().sum() == 0 and param.dim() > 1:
                param.normal_(0, 0.05)
    return net.eval()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_closed_form_matches_iterated_noising(schedule):
    diffusion = GaussianDiffusion(timesteps=200, schedule=schedule)
    # Mean coefficient and variance of x_t given x_0, step by step vs eq. 4.
    scale, variance = 1.0, 0.0
    for t in range(200):
        beta = float(diffusion.betas[t])
        scale, variance = scale * math.sqrt(1 - beta), (1 - beta) * variance + beta
        assert scale == pytest.approx(math.sqrt(float(diffusion.alpha_bar[t])), rel=1e-9)
        assert variance == pytest.approx(1 - float(diffusion.alpha_bar[t]), rel=1e-9)
    # And empirically: iterate q_step on many pixels, compare to q_sample's statistics.
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((40_000, 1, 1, 1), 0.7)
    x = x0.clone()
    for t in range(120):
        x = diffusion.q_step(x, t, torch.randn(x.shape, generator=generator))
    t = torch.full((x0.shape[0],), 119)
    closed = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
    assert x.mean().item() == pytest.approx(closed.mean().item(), abs=0.02)
    assert x.std().item() == pytest.approx(closed.std().item(), rel=0.02)


@pytest.mark.parametrize("make_betas", [linear_betas, cosine_betas])
def test_schedules_destroy_the_signal_monotonically(make_betas):
    betas = make_betas(1000)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    assert betas.shape == (1000,)
    assert (betas > 0).all() and (betas < 1).all()
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert alpha_bar[0] > 0.999  # the first step barely touches the image
    assert alpha_bar[-1] < 1e-3  # the last is (almost) pure noise


def test_cosine_schedule_follows_squared_cosine():
    alpha_bar = torch.cumprod(1 - cosine_betas(1000), dim=0)
    s = 0.008
    f = lambda t: math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (100, 500, 900):
        assert float(alpha_bar[t - 1]) == pytest.approx(f(t) / f(0), rel=1e-6)


def test_linear_schedule_is_ddpms_for_1000_steps():
    betas = linear_betas(1000)
    assert float(betas[0]) == pytest.approx(1e-4)
    assert float(betas[-1]) == pytest.approx(0.02)


def test_ddim_with_eta_zero_is_deterministic():
    diffusion = GaussianDiffusion(timesteps=100)
    net = noisy_unet()
    labels = torch.tensor([1, 7, 7, 3])
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    runs = [
        diffusion.ddim_sample(
            net,
            labels,
            (1, 8, 8),
            10,
            steps=10,
            guidance_scale=2.0,
            generator=torch.Generator().manual_seed(seed),
            x_T=x_T,
        )
        for seed in (1, 2)
    ]
    assert torch.equal(runs[0], runs[1])
    noisy = [
        diffusion.ddim_sample(
            net,
            labels,
            (1, 8, 8),
            10,
            steps=10,
            eta=1.0,
            generator=torch.Generator().manual_seed(seed),
            x_T=x_T,
        )
        for seed in (1, 2)
    ]
    assert not torch.allclose(noisy[0], noisy[1])


def test_ddim_with_eta_one_over_all_steps_is_ddpm():
    """Song et al. 2021: eta=1 on the full schedule is the DDPM ancestral sampler."""
    diffusion = GaussianDiffusion(timesteps=40, schedule="linear")
    net = noisy_unet(1)
    labels = torch.tensor([0, 4, 9])
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ddpm = diffusion.ddpm_sample(
        net, labels, (1, 8, 8), 10, generator=torch.Generator().manual_seed(9), x_T=x_T
    )
    ddim = diffusion.ddim_sample(
        net,
        labels,
        (1, 8, 8),
        10,
        steps=40,
        eta=1.0,
        generator=torch.Generator().manual_seed(9),
        x_T=x_T,
    )
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=1e-4)


def test_ddim_timesteps_run_from_last_step_to_zero():
    diffusion = GaussianDiffusion(timesteps=1000)
    steps = diffusion.ddim_timesteps(50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))


def test_classifier_free_guidance_combines_as_uncond_plus_scaled_difference():
    cond, uncond = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([7.0, -5.0]))


def test_guided_eps_asks_the_model_with_and_without_the_class():
    null_class = 10

    def model(x, t, y):  # "noise" = the class index, so the two passes are told apart
        return y.float()[:, None, None, None].expand_as(x)

    diffusion = GaussianDiffusion(timesteps=10)
    x, t, y = torch.zeros(2, 1, 4, 4), torch.tensor([3, 3]), torch.tensor([2, 6])
    eps = diffusion.guided_eps(model, x, t, y, null_class, guidance_scale=2.5)
    expected = null_class + 2.5 * (y.float() - null_class)  # uncond + s * (cond - uncond)
    torch.testing.assert_close(eps[:, 0, 0, 0], expected)


@pytest.mark.parametrize("scale", [-0.5, 21.0, float("nan")])
def test_out_of_range_guidance_scale_is_refused(scale):
    diffusion = GaussianDiffusion(timesteps=10)
    with pytest.raises(VisionInputError, match="guidance scale"):
        diffusion.ddim_sample(
            noisy_unet(), torch.tensor([1]), (1, 8, 8), 10, steps=5, guidance_scale=scale
        )


@pytest.mark.parametrize("steps", [0, 11, 2.5])
def test_out_of_range_step_count_is_refused(steps):
    diffusion = GaussianDiffusion(timesteps=10)
    with pytest.raises(VisionInputError, match="sampling steps"):
        diffusion.ddim_timesteps(steps)
