"""The learned aligners on CUDA compute what they compute on the CPU (skipped without a GPU).

In float64 the only differences are the order of floating-point reductions, so the forward pass
and every parameter gradient of a whole GTSRB IC-STN-4 model (four recurrences of the homography
warp, bilinear sampling and the classifier) agree to ~1e-10 relative.
"""

from __future__ import annotations

import pytest
import torch

from lkstn.experiments import classification as cl
from lkstn.experiments.gtsrb import GTSRB
from lkstn.perturb import perturbation
from lkstn.sampling import warp_image
from lkstn.warps import Homography

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_homography_sampling_and_its_gradients_match_the_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(5, 3, 40, 40, generator=gen, dtype=torch.float64)
    p = perturbation(Homography(), 5, 4.0, (36, 36), gen, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        x = image.to(device).clone().requires_grad_()
        q = p.to(device).clone().requires_grad_()
        out = warp_image(x, Homography(), q, (36, 36))
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view_as(out)
         ).sum().backward()  # fmt: skip
        results.append([t.detach().cpu().clone() for t in (out, x.grad, q.grad)])
    for cpu, cuda in zip(*results, strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=1e-10, atol=1e-12)


def test_gtsrb_icstn4_forward_and_gradients_match_the_cpu() -> None:
    net = cl.build_model(GTSRB, GTSRB.row("IC-STN-4"), torch.Generator().manual_seed(0)).double()
    last = net.aligner.predictor.layers[-1]
    with torch.no_grad():  # a non-identity predictor, so that every recurrence warps
        last.weight.normal_(0.0, 1e-3, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(6, 3, 36, 36, generator=gen, dtype=torch.float64)
    p_init = perturbation(Homography(), 6, 3.5, (36, 36), gen, dtype=torch.float64)
    labels = torch.randint(43, (6,), generator=gen)
    grads = {}
    for device in ("cpu", "cuda"):
        model = net.to(device)
        model.zero_grad(set_to_none=True)
        scores = model(images.to(device), p_init.to(device))
        torch.nn.functional.cross_entropy(scores, labels.to(device)).backward()
        # clones: Module.to() later moves the .grad tensors themselves
        tensors = (scores, *(q.grad for q in model.parameters()))
        grads[device] = [t.detach().cpu().clone() for t in tensors]
    assert len(grads["cuda"]) == 1 + len(list(net.parameters()))
    for cpu, cuda in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=1e-9, atol=1e-12)
