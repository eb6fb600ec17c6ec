"""HAMNet: a small pre-norm transformer over groups of input features.

The input vector is cut into ``T = input_size / token_size`` tokens of ``token_size``
consecutive features each; every token is embedded, mixed with the others by
multi-head self-attention, and the pooled result is classified::

    x  [B, input_size]
     │  reshape
     ▼
       [B, T, token_size]
     │  embed: Linear(token_size → hidden)  +  pos [1, T, hidden]   (learned)
     ▼
    h  [B, T, hidden] ───────────────┐
     │                               │   HAMNetBlock, repeated num_layers times
     │  LayerNorm                    │   (layer i keeps heads_of(i) heads and
     │  MultiHeadSelfAttention       │    an FFN of width ffn_of(i))
     │    q/k/v_proj: hidden → H·D   │
     │    softmax(q·kᵀ/√D)·v         │
     │    out_proj:   H·D → hidden   │
     │  Dropout                      │
     ▼                               │
     + ◄─────────────────────────────┘
     │ ─────────────────────────────┐
     │  LayerNorm                   │
     │  FFN: fc1 (hidden → ffn)     │
     │       activation, Dropout    │
     │       fc2 (ffn → hidden)     │
     │  Dropout                     │
     ▼                              │
     + ◄────────────────────────────┘
     │
     │  norm: LayerNorm, mean over the T tokens
     ▼
       [B, hidden]
     │  head: Linear(hidden → num_classes)
     ▼
    logits [B, num_classes]

Attention is written with plain matmuls and a softmax (no fused kernels) so that the
model exports to ONNX with the TorchScript exporter and so that heads can be pruned by
slicing the rows of ``q_proj``/``k_proj``/``v_proj`` and the columns of ``out_proj``:
head ``h`` owns rows ``h*head_dim:(h+1)*head_dim``. Per-layer head counts and FFN widths
(``layer_heads``/``layer_ffn``) describe such pruned models.

With one token (``token_size == input_size``) the softmax over a single key is 1, so
attention is exactly ``out_proj(v_proj(x))``: the model then runs on ``[B, hidden]``
without the token axis, skips ``q_proj``/``k_proj`` (they stay in the state dict so
checkpoints and pruning plans keep one layout) and, in ONNX export, writes the two
projections as one folded matrix. That is a residual MLP whose every linear layer is
one ``Gemm`` node in ONNX Runtime, the fastest shape at batch 1 where per-operator
overhead dominates.

Every dropout site (embedding, attention weights, both residual branches, inside the FFN)
is built by :func:`make_dropout`, so ``dropout_type`` picks standard, Gaussian or alpha
dropout for all of them; each is the identity in eval mode and adds no parameters.
Setting the runtime attribute :attr:`HAMNet.gradient_checkpointing` recomputes each
block's activations in the backward pass instead of storing them (training only).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils.checkpoint
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hamnet.core.config import HAMNetSection
from hamnet.core.errors import ConfigError, DataError, ModelLoadError

CHECKPOINT_FORMAT = "hamnet-checkpoint/1"

_POS_STD = 0.2

_EXPECTED_CHECKPOINT = (
    "a hamnet checkpoint (.pt saved by hamnet) with keys format/config/state_dict"
)

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}

DropoutType = Literal["standard", "gaussian", "alpha"]


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise ``x * N(1, p / (1 - p))`` in training, identity in eval.

    The noise has the variance of standard dropout's rescaled Bernoulli mask, so ``p``
    means the same for both (Srivastava et al., 2014).

    Args:
        p: Equivalent drop probability, in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        std = math.sqrt(self.p / (1.0 - self.p))
        return x * (1.0 + std * torch.randn_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(dropout_type: DropoutType, p: float) -> nn.Module:
    """Build one dropout module of the given kind.

    Args:
        dropout_type: ``"standard"`` (:class:`torch.nn.Dropout`), ``"gaussian"``
            (:class:`GaussianDropout`) or ``"alpha"`` (:class:`torch.nn.AlphaDropout`).
        p: Drop probability.

    Returns:
        The module; it has no parameters or buffers and is the identity in eval mode.

    Raises:
        ValueError: If ``dropout_type`` is not one of the three kinds.
    """
    if dropout_type == "standard":
        return nn.Dropout(p)
    if dropout_type == "gaussian":
        return GaussianDropout(p)
    if dropout_type == "alpha":
        return nn.AlphaDropout(p)
    raise ValueError(
        f"dropout_type must be 'standard', 'gaussian' or 'alpha', but got {dropout_type!r}"
    )


class HAMNetConfig(BaseModel):
    """Architecture of one :class:`HAMNet`.

    ``head_dim`` and ``token_size`` accept ``None`` and are resolved on validation
    (``hidden_size // num_heads`` and ``1``), so a saved config always states them and a
    pruned copy keeps the head width of its parent.

    Attributes:
        input_size: Features per sample.
        num_classes: Output logits.
        hidden_size: Width of the residual stream.
        num_layers: Number of transformer blocks.
        num_heads: Attention heads per layer (unless ``layer_heads`` says otherwise).
        head_dim: Width of one attention head.
        ffn_ratio: FFN width as a multiple of ``hidden_size`` (unless ``layer_ffn`` is set).
        token_size: Consecutive features per token; must divide ``input_size``.
        dropout_rate: Dropout on the embedding, the attention weights, inside the FFN and
            on both residual branches.
        dropout_type: Kind of every dropout (see :func:`make_dropout`). Configs saved
            before this field existed load as ``"standard"``.
        activation: FFN activation.
        layer_heads: Heads kept in each layer (for structurally pruned models).
        layer_ffn: FFN width of each layer (for structurally pruned models).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    head_dim: int = Field(None, ge=1, validate_default=True)  # type: ignore[assignment]
    ffn_ratio: float = Field(2.0, gt=0.0)
    token_size: int = Field(None, ge=1, validate_default=True)  # type: ignore[assignment]
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    dropout_type: DropoutType = "standard"
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    layer_heads: list[int] | None = None
    layer_ffn: list[int] | None = None

    @field_validator("head_dim", mode="before")
    @classmethod
    def _default_head_dim(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        hidden, heads = info.data.get("hidden_size"), info.data.get("num_heads")
        if hidden is None or heads is None:
            return value
        if hidden % heads != 0:
            raise ValueError(
                f"hidden_size must be divisible by num_heads when head_dim is not set, but got "
                f"hidden_size={hidden} and num_heads={heads}"
            )
        return hidden // heads

    @field_validator("token_size", mode="before")
    @classmethod
    def _default_token_size(cls, value: Any) -> Any:
        return 1 if value is None else value

    @model_validator(mode="after")
    def _check_shapes(self) -> HAMNetConfig:
        if self.input_size % self.token_size != 0:
            raise ValueError(
                f"input_size must be divisible by token_size, but got input_size="
                f"{self.input_size} and token_size={self.token_size}"
            )
        for name, values in (("layer_heads", self.layer_heads), ("layer_ffn", self.layer_ffn)):
            if values is None:
                continue
            if len(values) != self.num_layers:
                raise ValueError(
                    f"{name} must have one entry per layer ({self.num_layers}), but got "
                    f"{len(values)}: {values}"
                )
            if any(v < 1 for v in values):
                raise ValueError(f"{name} entries must be at least 1, but got {values}")
        if self.layer_ffn is None and round(self.hidden_size * self.ffn_ratio) < 1:
            raise ValueError(
                f"hidden_size * ffn_ratio must be at least 1, but got {self.hidden_size} * "
                f"{self.ffn_ratio}"
            )
        return self

    @property
    def num_tokens(self) -> int:
        """Tokens per sample (``input_size // token_size``)."""
        return self.input_size // self.token_size

    def heads_of(self, layer: int) -> int:
        """Attention heads in ``layer`` (0-based)."""
        self._check_layer(layer)
        return self.layer_heads[layer] if self.layer_heads is not None else self.num_heads

    def ffn_of(self, layer: int) -> int:
        """FFN width of ``layer`` (0-based)."""
        self._check_layer(layer)
        if self.layer_ffn is not None:
            return self.layer_ffn[layer]
        return round(self.hidden_size * self.ffn_ratio)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer must be in [0, {self.num_layers}), but got {layer}")

    @classmethod
    def from_section(
        cls, section: HAMNetSection, input_size: int, num_classes: int
    ) -> HAMNetConfig:
        """Build the config of a model trained from scratch on some data.

        Args:
            section: The ``model.hamnet`` settings.
            input_size: Features per sample in the data.
            num_classes: Classes in the data.

        Returns:
            The config; ``section.input_size``/``num_classes`` win when set.

        Raises:
            DataError: If the section fixes ``input_size`` or ``num_classes`` to values
                the data does not have.
            ConfigError: If the settings do not fit together for this data (e.g.
                ``token_size`` does not divide the number of features).
        """
        if section.input_size is not None and section.input_size != input_size:
            raise DataError(
                f"model expects {section.input_size} features (model.hamnet.input_size), "
                f"but the data has {input_size}"
            )
        if section.num_classes is not None and section.num_classes < num_classes:
            raise DataError(
                f"model has {section.num_classes} classes (model.hamnet.num_classes), "
                f"but the data has {num_classes}"
            )
        values = section.model_dump(exclude={"input_size", "num_classes"})
        values["input_size"] = input_size
        values["num_classes"] = section.num_classes or num_classes
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise ConfigError(f"model.hamnet does not fit the data: {problems}") from None


class _OrtAttention(torch.autograd.Function):
    """Packed-QKV self-attention that exports as ONNX Runtime's ``com.microsoft.Attention``.

    ``forward`` computes what :meth:`MultiHeadSelfAttention.forward` computes in eval
    mode (it is what the exporter traces for shapes); ``symbolic`` writes the single
    contrib node that replaces ~17 ONNX nodes (three projections, reshapes, transposes,
    two matmuls and the softmax) per block. Only :func:`ort_attention_export` uses it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int, inner: int
    ) -> torch.Tensor:
        del ctx
        batch, tokens, _ = x.shape
        q, k, v = (x @ weight + bias).split(inner, dim=-1)
        head_dim = inner // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(head_dim)
        mixed = torch.softmax(scores, dim=-1) @ split(v)
        return mixed.transpose(1, 2).reshape(batch, tokens, inner)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, heads: int, inner: int) -> Any:
        sizes = x.type().varyingSizes()
        attrs: dict[str, Any] = {"num_heads_i": heads}
        if sizes[-1] != inner:  # pruned heads; left out otherwise so INT8 gets QAttention
            attrs["qkv_hidden_sizes_i"] = [inner, inner, inner]
        out = g.op("com.microsoft::Attention", x, weight, bias, **attrs)
        # Tell the exporter's shape inference what comes out: [batch, tokens, inner].
        out.setType(x.type().with_sizes([*sizes[:-1], inner]))
        return out


@contextlib.contextmanager
def ort_attention_export(model: nn.Module) -> Iterator[None]:
    """While active, ONNX export writes each HAMNet attention as one ORT contrib node.

    It also folds the embedding bias into the position embedding (one Add less). The
    graph then runs in ONNX Runtime only (the ``com.microsoft`` domain; OpenVINO and
    other runtimes do not know it), with the same outputs. Eager PyTorch is not
    affected: the switch applies inside ``torch.onnx.export`` only.

    Args:
        model: The model whose HAMNet modules are switched (and switched back on exit).

    Example:
        >>> with ort_attention_export(model):
        ...     torch.onnx.export(model, ..., custom_opsets={"com.microsoft": 1})
    """
    switched = [m for m in model.modules() if isinstance(m, (MultiHeadSelfAttention, HAMNet))]
    for module in switched:
        module.ort_fused_export = True
    try:
        yield
    finally:
        for module in switched:
            module.ort_fused_export = False


@contextlib.contextmanager
def folded_one_token_attention(model: nn.Module) -> Iterator[None]:
    """While active, one-token attentions run ``out_proj(v_proj(x))`` as one linear map.

    The product of the two projections is computed once, outside any trace, so an ONNX
    export writes one weight matrix and one ``Gemm`` instead of two (and a smaller
    file). Only HAMNets on the one-token fast path are switched; attentions over several
    tokens never take the value-only path, so nothing is computed for them. The weights
    must not change while the context is active.

    Args:
        model: The model whose attention modules are switched (and switched back on exit).
    """
    switched = [
        m
        for net in model.modules()
        if isinstance(net, HAMNet) and net.config.num_tokens == 1 and net.one_token_fast_path
        for m in net.modules()
        if isinstance(m, MultiHeadSelfAttention)
    ]
    with torch.no_grad():
        for m in switched:
            out, value = m.out_proj, m.v_proj
            m.folded_value_path = (
                (out.weight @ value.weight).detach().clone(),
                (out.weight @ value.bias + out.bias).detach().clone(),
            )
    try:
        yield
    finally:
        for m in switched:
            m.folded_value_path = None


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with separate, head-sliceable projections.

    Args:
        hidden_size: Width of the input and output.
        num_heads: Number of heads.
        head_dim: Width of one head.
        dropout_rate: Dropout on the attention weights.
        dropout_type: Kind of that dropout (see :func:`make_dropout`).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        dropout_rate: float = 0.0,
        dropout_type: DropoutType = "standard",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner)
        self.k_proj = nn.Linear(hidden_size, inner)
        self.v_proj = nn.Linear(hidden_size, inner)
        self.out_proj = nn.Linear(inner, hidden_size)
        self.dropout = make_dropout(dropout_type, dropout_rate)
        # A no-op that gives the attention map [B, H, T, T] a module to hook
        # (distillation's attention transfer reads it with a forward hook).
        self.attn_probe = nn.Identity()
        self.scale = 1.0 / math.sqrt(head_dim)
        self.ort_fused_export = False  # set by ort_attention_export
        self.folded_value_path: tuple[torch.Tensor, torch.Tensor] | None = None  # see below

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = t.shape
        return t.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self._one_token(x)
        if self.ort_fused_export and torch.onnx.is_in_onnx_export():
            return self.out_proj(self._ort_fused(x))
        batch, tokens, _ = x.shape
        q = self._split(self.q_proj(x))
        k = self._split(self.k_proj(x))
        v = self._split(self.v_proj(x))
        weights = self.attn_probe(
            torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        )
        mixed = torch.matmul(self.dropout(weights), v)
        mixed = mixed.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.out_proj(mixed)

    def _one_token(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over one token, ``x`` of shape [batch, hidden]: the value path only.

        The attention weights are all 1; in training their dropout still applies, one
        draw per head, as in the general path.
        """
        if self.folded_value_path is not None:
            return nn.functional.linear(x, *self.folded_value_path)
        mixed = self.v_proj(x)
        if self.training:
            keep = self.dropout(mixed.new_ones(x.shape[0], self.num_heads, 1))
            mixed = (mixed.view(-1, self.num_heads, self.head_dim) * keep).flatten(1)
        return self.out_proj(mixed)

    def _ort_fused(self, x: torch.Tensor) -> torch.Tensor:
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections], dim=0).t()
        bias = torch.cat([p.bias for p in projections])
        inner = self.num_heads * self.head_dim
        out: torch.Tensor = _OrtAttention.apply(x, weight, bias, self.num_heads, inner)
        return out


class FeedForward(nn.Module):
    """Position-wise MLP: ``fc2(dropout(act(fc1(x))))``."""

    def __init__(
        self,
        hidden_size: int,
        ffn_size: int,
        activation: str,
        dropout_rate: float = 0.0,
        dropout_type: DropoutType = "standard",
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_size)
        self.act = _ACTIVATIONS[activation]()
        self.dropout = make_dropout(dropout_type, dropout_rate)
        self.fc2 = nn.Linear(ffn_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class HAMNetBlock(nn.Module):
    """One pre-norm transformer block: attention then FFN, each with a residual."""

    def __init__(self, config: HAMNetConfig, layer: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.norm1 = nn.LayerNorm(hidden)
        rate, kind = config.dropout_rate, config.dropout_type
        self.attn = MultiHeadSelfAttention(
            hidden, config.heads_of(layer), config.head_dim, rate, kind
        )
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, config.ffn_of(layer), config.activation, rate, kind)
        self.dropout = make_dropout(kind, rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class HAMNet(nn.Module):
    """Transformer classifier over feature tokens (see the module docstring).

    Args:
        config: The architecture.

    Attributes:
        gradient_checkpointing: Recompute each block's activations in the backward pass
            instead of storing them (trades compute for memory; training mode only). A
            runtime switch, not part of the config or the checkpoint; off by default.
        one_token_fast_path: With one token, run on ``[batch, hidden]`` and skip the
            query/key projections (see the module docstring). Same outputs either way;
            pruning turns it off on its working copy so that torch-pruning traces every
            projection. A runtime switch; on by default.

    Example:
        >>> model = HAMNet(HAMNetConfig(input_size=64, num_classes=10, token_size=8))
        >>> model(torch.zeros(2, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: HAMNetConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed = nn.Linear(config.token_size, hidden)
        self.pos = nn.Parameter(torch.zeros(1, config.num_tokens, hidden))
        self.embed_dropout = make_dropout(config.dropout_type, config.dropout_rate)
        self.blocks = nn.ModuleList(HAMNetBlock(config, i) for i in range(config.num_layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, config.num_classes)
        nn.init.normal_(self.pos, std=_POS_STD)
        self.gradient_checkpointing = False
        self.one_token_fast_path = True
        self.ort_fused_export = False  # set by ort_attention_export

    def reset_parameters(self) -> None:
        """Re-initialise every weight: torch's defaults, and N(0, 0.2²) for ``pos``.

        A positional embedding much smaller than the token embeddings leaves the
        mean-pooled model nearly blind to token order at the start, which slows training.
        """
        for module in self.modules():
            if module is not self and isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()
        nn.init.normal_(self.pos, std=_POS_STD)

    def no_weight_decay(self) -> set[str]:
        """Names of weight tensors that should not be decayed by the optimizer."""
        return {"pos"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not torch.jit.is_tracing() and (x.dim() != 2 or x.shape[1] != cfg.input_size):
            raise DataError(
                f"HAMNet expects input of shape [batch, {cfg.input_size}], but got {list(x.shape)}"
            )
        if cfg.num_tokens == 1 and self.one_token_fast_path:
            # One token: no token axis, the embedding bias and position in one bias.
            h = nn.functional.linear(x, self.embed.weight, self.embed.bias + self.pos.view(-1))
            return self.head(self.norm(self._blocks(self.embed_dropout(h))))
        tokens = x.reshape(-1, cfg.num_tokens, cfg.token_size)
        if self.ort_fused_export and torch.onnx.is_in_onnx_export():
            # One Add instead of two: the embedding bias folded into the positions.
            h = torch.matmul(tokens, self.embed.weight.t()) + (self.embed.bias + self.pos)
        else:
            h = self.embed_dropout(self.embed(tokens) + self.pos)
        return self.head(self.norm(self._blocks(h)).mean(dim=1))

    def _blocks(self, h: torch.Tensor) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                h = torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return h


def save_checkpoint(model: HAMNet, path: str | Path) -> Path:
    """Save a model's config and weights as a hamnet checkpoint.

    The file is written next to its destination and renamed into place, so a reader
    never sees a half-written checkpoint.

    Args:
        model: The model.
        path: Destination ``.pt`` file; missing parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.model_dump(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, *, trust: bool = False) -> HAMNet:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The ``.pt`` file.
        trust: Load with ``weights_only=False``, which runs any code pickled in the file.
            Only for files you made yourself.

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        ModelLoadError: If the file is missing, unreadable, not a hamnet checkpoint, or
            its weights do not match its config.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"checkpoint {str(path)!r} does not exist (expected {_EXPECTED_CHECKPOINT})"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        blocked = _blocked_global(str(err))
        if blocked is not None and not trust:
            raise ModelLoadError(
                f"checkpoint {str(path)!r} pickles Python code ({blocked}), so it cannot be "
                f"loaded safely (expected {_EXPECTED_CHECKPOINT}). If you made this file "
                f"yourself, set model.trust_checkpoint: true to load it with "
                f"weights_only=False; never do so for files you do not trust"
            ) from None
        raise ModelLoadError(
            f"checkpoint {str(path)!r} is not a file written by torch.save (expected "
            f"{_EXPECTED_CHECKPOINT}): {_unpickler_reason(str(err))}"
        ) from None
    except Exception as err:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} is not a readable torch file (expected "
            f"{_EXPECTED_CHECKPOINT}): {type(err).__name__}: {_first_line(err)}"
        ) from None
    return _model_from_payload(payload, path)


def _model_from_payload(payload: Any, path: Path) -> HAMNet:
    where = repr(str(path))
    if not isinstance(payload, Mapping):
        raise ModelLoadError(
            f"checkpoint {where} holds a {type(payload).__name__}, but expected "
            f"{_EXPECTED_CHECKPOINT}"
        )
    missing = [k for k in ("format", "config", "state_dict") if k not in payload]
    if missing:
        raise ModelLoadError(
            f"checkpoint {where} has keys {sorted(map(str, payload))} but lacks {missing}; "
            f"expected {_EXPECTED_CHECKPOINT}"
        )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ModelLoadError(
            f"checkpoint {where} has format {payload['format']!r}, but this version of "
            f"hamnet reads {CHECKPOINT_FORMAT!r}"
        )
    try:
        config = HAMNetConfig.model_validate(payload["config"])
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in err.errors()
        )
        raise ModelLoadError(f"checkpoint {where} has an invalid config: {problems}") from None
    model = HAMNet(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ModelLoadError(
            f"checkpoint {where}: the weights do not match its config: {_first_line(err)}"
        ) from None
    return model.eval()


def _blocked_global(message: str) -> str | None:
    match = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return match.group(1) if match else None


def _unpickler_reason(message: str) -> str:
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\n", message)
    return match.group(1).strip() if match else _first_line_of(message)


def _first_line_of(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else "unknown error"


def _first_line(err: BaseException) -> str:
    return _first_line_of(str(err)) if str(err).strip() else type(err).__name__


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_size: int) -> int:
    """FLOPs of one forward pass at batch size 1.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix
    multiplications and convolutions only (2 FLOPs per multiply-accumulate): linear
    layers and the attention matmuls. Softmax, normalisation, activations and additions
    are not counted.

    Args:
        model: The model; it is run once in eval mode and its mode is restored.
        input_size: Features per sample.

    Returns:
        The FLOP count.
    """
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, input_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
