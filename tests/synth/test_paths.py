"""The path objects (issue 16): one per family, the same object makes training targets and drives sampling."""
import torch

from synth.paths import FLOW, DiffusionPath


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_diffusion_training_side_equals_diffusers():
    s = ddpm()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, 8, 8, generator=g), torch.randn(4, 2, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    for pred in ("epsilon", "v_prediction"):
        path = DiffusionPath(s.alphas_cumprod.float(), pred)
        assert torch.allclose(path.add_noise(x0, eps, t), s.add_noise(x0, eps, t), atol=1e-6)
        want = eps if pred == "epsilon" else s.get_velocity(x0, eps, t)
        assert torch.allclose(path.target(x0, eps, t), want, atol=1e-6)


def test_a_perfect_network_round_trips_through_the_same_path():
    """Train-side noising, then the sample-side denoiser fed the exact target, gives back x0."""
    s = ddpm()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    for pred in ("epsilon", "v_prediction"):
        path = DiffusionPath(s.alphas_cumprod, pred)
        t = torch.tensor([100, 400, 900])
        x_t = path.add_noise(x0, eps, t)
        target = path.target(x0, eps, t)
        sigma = ((1 - path.alphas_cumprod[t]) / path.alphas_cumprod[t]).sqrt().float()
        x_ve = x_t / path.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1).float()
        denoised = path.denoiser(lambda x_vp, tt, c: target)(x_ve, sigma, None)
        assert torch.allclose(denoised, x0, atol=1e-3), pred


def test_min_snr_weight_and_grid():
    s = ddpm()
    path = DiffusionPath(s.alphas_cumprod, "epsilon", min_snr_gamma=5.0)
    w = path.loss_weight(torch.tensor([0, 999]))
    assert w[0] < 1 and torch.isclose(w[1], torch.tensor(1.0))  # high SNR clipped, low SNR full weight
    sig = path.sampling_sigmas(10)
    assert len(sig) == 11 and sig[-1] == 0 and bool((sig[:-1].diff() < 0).all())


def test_flow_path_training_and_sampling_share_the_convention():
    """x_t at t = 0 is the noise, at t = 1 the data; the denoiser of the exact velocity returns the data."""
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    assert torch.equal(FLOW.interpolate(x0, x1, torch.zeros(2)), x0)
    assert torch.equal(FLOW.interpolate(x0, x1, torch.ones(2)), x1)
    assert torch.equal(FLOW.network_time(torch.tensor([0.5])), torch.tensor([500.0]))
    t = torch.tensor([0.3, 0.7])
    x_t = FLOW.interpolate(x0, x1, t)
    v = FLOW.target(x0, x1)
    sigma = (1 - t) / t
    denoised = FLOW.denoiser(lambda xt, tt, c: v)(x_t / t.view(-1, 1, 1, 1), sigma, None)
    assert torch.allclose(denoised, x1, atol=1e-5)
    out = FLOW.integrate(lambda xt, tt, c: v, x0, 0.0, 1.0, 8, sampler="euler")
    assert torch.allclose(out, x1, atol=1e-3)  # a straight path is integrated exactly


def test_generators_and_objectives_hold_the_paths():
    from synth.trainers.bridge import FlowObjective
    from synth.trainers.ldm import DiffusionObjective

    s = ddpm()
    obj = DiffusionObjective(torch.nn.Identity(), None, s.alphas_cumprod, "epsilon", None)
    assert isinstance(obj.path, DiffusionPath) and obj.path.alphas_cumprod.dtype == torch.float32
    assert "path.alphas_cumprod" not in obj.state_dict()  # never in a checkpoint
    import inspect

    assert "FLOW." in inspect.getsource(FlowObjective.forward)
