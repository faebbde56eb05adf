"""Small shared helpers for tests: tiny configs and closed-form denoisers."""
from __future__ import annotations

from torch import nn

from vdmcodec.diffusion import VDM, ModelConfig
from vdmcodec.networks import NetworkConfig
from vdmcodec.schedules import ScheduleConfig, ScheduleKind, alpha_sigma


def tiny_model_config(schedule: ScheduleKind = ScheduleKind.learned, channels: int = 8, image_channels: int = 1) -> ModelConfig:
    return ModelConfig(
        schedule=ScheduleConfig(kind=schedule, hidden=16),
        network=NetworkConfig(image_channels=image_channels, channels=channels, channel_mult=(1, 2), num_res_blocks=1),
    )


class GaussianOptimalEps(nn.Module):
    """E[eps | z_t] for data x ~ N(m, s^2) per dimension, in the denoiser's interface
    (z, t_norm) -> eps_hat: eps_hat = sigma (z - alpha m) / (alpha^2 s^2 + sigma^2)."""

    def __init__(self, m: float, s: float, lo: float, hi: float):
        super().__init__()
        self.m, self.s, self.lo, self.hi = m, s, lo, hi

    def forward(self, z, t_norm):
        gamma = (self.lo + t_norm.double() * (self.hi - self.lo)).to(z.dtype)
        alpha, sigma = alpha_sigma(gamma.reshape(-1, *([1] * (z.dim() - 1))))
        return sigma * (z - alpha * self.m) / (alpha**2 * self.s**2 + sigma**2)


def gaussian_vdm(m: float, s: float, g0: float = -10.0, g1: float = 6.0) -> VDM:
    cfg = ModelConfig(schedule=ScheduleConfig(kind=ScheduleKind.fixed_linear, gamma_min=g0, gamma_max=g1),
                      network=NetworkConfig(channels=4, channel_mult=(1,), num_res_blocks=1),
                      cond_gamma_min=g0, cond_gamma_max=g1)
    model = VDM(cfg).double()
    model.net = GaussianOptimalEps(m, s, g0, g1)
    return model
