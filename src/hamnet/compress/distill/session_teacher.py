"""A teacher that is not a torch module: any model hamnet can run, seen through its logits.

Distillation into HAMNet students needs only the teacher's outputs on the student's
inputs when the loss terms are logit-based (``soft``, ``relational``, ...). So an ONNX
model (a conv net exported by :meth:`hamnet.api.Optimizer.from_pytorch`, a model from
another framework) can teach too: :class:`SessionTeacher` wraps the model's inference
session as a parameter-free ``nn.Module`` that maps a torch batch to torch logits.
Terms that read a teacher's hidden layers or attention maps cannot use it.

Example:
    >>> session = load_session(ref, "onnxruntime", profile)
    >>> teacher = SessionTeacher(session, ref.sha256)
    >>> distill_model(student, [teacher], dataset, [{"method": "soft"}], cfg)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hamnet.backends.session import InferenceSession
from hamnet.core.errors import DataError


class SessionTeacher(nn.Module):
    """Logits of an inference session, as a frozen torch module.

    Args:
        session: The teacher model, loaded in any runtime.
        sha256: The sha256 of the teacher's file (hex). It is kept as a buffer, so
            teacher-output caches keyed by :func:`hamnet.compress.distill.train.model_digest`
            tell different teachers apart.

    Raises:
        DataError: If ``sha256`` is not a hex digest.
    """

    def __init__(self, session: InferenceSession, sha256: str) -> None:
        super().__init__()
        try:
            digest = bytes.fromhex(sha256)
        except ValueError:
            raise DataError(f"sha256 must be a hex digest, but got {sha256!r}") from None
        self.session = session
        self.register_buffer("source_sha256", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on ``x`` (moved to the CPU) and return its logits on ``x``'s device.

        Raises:
            DataError: If the session does not return ``[batch, classes]`` logits.
        """
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        logits = self.session.run(array)
        if logits.ndim != 2 or len(logits) != len(array):
            raise DataError(
                f"a teacher must return logits of shape [batch, classes] = [{len(array)}, ...], "
                f"but the {self.session.runtime} teacher returned shape {list(logits.shape)}"
            )
        return torch.from_numpy(logits).to(x.device)
