"""The frozen-head log-prob kernel, run by Triton's CPU interpreter, against torch's log-softmax."""

import pytest

SCRIPT = """
import torch
from mathgrpo.training import head_kernel
torch.manual_seed(0)
head_kernel.BLOCK = 256  # several steps per row, the last one partial
for n, vocab, temp, dtype in [(5, 1000, 1.0, torch.float32), (3, 700, 0.7, torch.float32), (4, 100, 1.0, torch.float32),
                             (6, 1000, 1.0, torch.bfloat16)]:
    logits = (torch.randn(n, vocab) * 4).to(dtype)
    targets = torch.randint(0, vocab, (n,))
    ref_logp = torch.log_softmax(logits.float() / temp, dim=-1)
    want = ref_logp.gather(1, targets[:, None]).squeeze(1)
    grad = ref_logp.exp()
    grad[torch.arange(n), targets] -= 1
    buf = logits.clone()
    got = head_kernel.logprob_grad_(buf, targets, temp, grad=False)
    assert torch.equal(buf, logits)  # no gradient asked: logits untouched
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()
    got = head_kernel.logprob_grad_(buf, targets, temp, grad=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (got - want).abs().max() < 1e-4 and (buf.float() - grad).abs().max() < tol, (buf.float() - grad).abs().max()
print("ok")
"""


@pytest.mark.triton_interpreter
def test_logprob_grad_kernel_matches_torch_interpreted(interpreted):
    """log p(target) and softmax - onehot, fp32 and bf16, temperatures 1 and 0.7, vocabularies over and under a block."""
    interpreted(SCRIPT)
