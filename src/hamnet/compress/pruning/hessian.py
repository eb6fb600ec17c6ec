"""Hessian-guided pruning sensitivity (seed 003's H-OBS) with K-FAC factors.

For every ``nn.Linear`` layer with weight ``W [out, in]`` and (optional) bias ``b`` the
Fisher of the loss w.r.t. ``W̃ = [W, b]`` is approximated by Kronecker factors::

    A = E[ã ãᵀ]   (ã: the layer input with a 1 appended when the layer has a bias)
    G = E[g gᵀ]   (g: gradient of the PER-SAMPLE loss w.r.t. the layer output)

Conventions:

* Vectorisation. In math notation (column-major ``vec``) ``F ≈ A ⊗ G``; with torch's
  row-major ``W̃.flatten()`` the same matrix is ``torch.kron(G, A)``, so
  ``diag F = outer(diag G, diag A)`` has the shape of ``W̃``.
* Scaling. The backward pass must be of the batch-MEAN loss (``reduction="mean"``);
  gradients reaching a layer output are multiplied by the batch size (its leading
  dimension) to recover per-sample loss gradients, so ``G`` estimates the Fisher of one
  sample's loss.
* Tokens. Outputs ``[B, T, out]`` are flattened to ``[B·T, out]`` (K-FAC "expand"):
  ``A`` averages ``ã ãᵀ`` over all ``B·T`` rows, ``G`` sums ``g gᵀ`` over the ``T``
  tokens of a sample and averages over the ``B`` samples. With ``T = 1`` both are the
  textbook K-FAC factors.
* Labels. ``fisher="true"`` (default) backpropagates labels sampled from the model's own
  predictive distribution (the true Fisher, which equals the Gauss-Newton matrix for
  cross-entropy); ``fisher="empirical"`` uses the data's labels.
* Damping (π-damping, Martens & Grosse 2015): ``A + π√λ·I`` and ``G + (√λ/π)·I`` with
  ``π = sqrt((tr A / dim A) / (tr G / dim G))``, so the damped product is scale-invariant.

The OBS saliency of removing row ``i`` of ``W̃`` is ``½ w̃_iᵀ ((H⁻¹)_ii-block)⁻¹ w̃_i``;
with ``H ≈ A ⊗ G`` that block is ``(G⁻¹)_ii · A⁻¹``, giving
``saliency_i = ½ (w̃_iᵀ A w̃_i) / (G⁻¹)_ii``. Removing input column ``j`` symmetrically
costs ``½ (w_jᵀ G w_j) / (A⁻¹)_jj`` (``w_j = W[:, j]``, bias kept).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hamnet.compress.pruning.scores import linear_scores_importance_base
from hamnet.core.errors import ConfigError, DataError
from hamnet.training.data import Dataset

FisherKind = Literal["true", "empirical"]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_DATASET_BATCH_SIZE = 64
_EPS = 1e-12


@dataclass
class _Stats:
    """Running sums of one layer's statistics."""

    a_sum: torch.Tensor
    g_sum: torch.Tensor
    diag_sum: torch.Tensor
    a_rows: int = 0
    g_samples: int = 0
    diag_samples: int = 0


class KFACHessianApproximator:
    """K-FAC factors ``A`` and ``G`` (and the exact Fisher diagonal) of linears and convolutions.

    ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``, numeric padding, zero padding mode)
    layers are tracked. A convolution is treated as a linear map on its unfolded input
    patches (``in_channels·kh·kw`` inputs, one "token" per output position): ``A``
    averages the patch outer products and ``G`` the output-gradient outer products over
    the positions, so its rows are the output filters.

    Usage: :meth:`register_hooks`, then for each batch a forward pass and a backward pass
    of the batch-mean loss followed by :meth:`update_factors` (or simply
    :meth:`accumulate`), then read :meth:`factors`; :meth:`remove_hooks` when done.

    Args:
        model: The network.
        damping: λ of the π-damping applied by :meth:`damped_factors`.
        layers: Qualified names of the layers to track; None tracks every supported one.
        fisher: ``"true"`` (labels sampled from the model) or ``"empirical"`` (data
            labels); read by :meth:`accumulate`.

    Raises:
        ConfigError: If ``damping`` is negative, ``fisher`` unknown, or a name in
            ``layers`` is not a supported ``nn.Linear``/``nn.Conv2d`` of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        damping: float = 1e-3,
        layers: list[str] | None = None,
        fisher: FisherKind = "true",
    ) -> None:
        if damping < 0:
            raise ConfigError(f"damping must be non-negative, but got {damping}")
        if fisher not in ("true", "empirical"):
            raise ConfigError(f"fisher must be 'true' or 'empirical', but got {fisher!r}")
        linears = {n: m for n, m in model.named_modules() if _trackable(m)}
        if layers is not None:
            unknown = [n for n in layers if n not in linears]
            if unknown:
                few = sorted(linears)[:5]
                raise ConfigError(
                    f"layers must name nn.Linear or nn.Conv2d modules of the model (e.g. "
                    f"{few}), but got unknown {unknown}"
                )
            linears = {n: linears[n] for n in layers}
        self.model = model
        self.damping = float(damping)
        self.fisher: FisherKind = fisher
        self.modules: dict[str, nn.Linear | nn.Conv2d] = linears
        self._stats: dict[str, _Stats] = {}
        self._pending: dict[str, list[tuple[str, torch.Tensor, int]]] = {}
        self._handles: list[Any] = []

    @property
    def layer_names(self) -> list[str]:
        """Qualified names of the tracked layers."""
        return list(self.modules)

    def register_hooks(self) -> None:
        """Attach forward hooks (which hook the outputs' gradients) to the tracked layers."""
        if self._handles:
            return
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def remove_hooks(self) -> None:
        """Detach every hook; statistics already folded in are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            a = _augment(_patches(module, inputs[0].detach()), module.bias is not None)
            rows = a.reshape(-1, a.shape[-1])
            self._pending.setdefault(name, []).append(("a", rows.T @ rows, rows.shape[0]))
            if output.requires_grad:
                output.register_hook(self._grad_hook(name, a))

        return hook

    def _grad_hook(self, name: str, a: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            batch = grad.shape[0]
            g = _positions_last(grad.detach()).double() * batch
            rows = g.reshape(-1, g.shape[-1])
            pending = self._pending.setdefault(name, [])
            pending.append(("g", rows.T @ rows, batch))
            g3 = g.reshape(batch, -1, g.shape[-1])
            a3 = a.reshape(batch, -1, a.shape[-1])
            per_sample = torch.einsum("nto,nti->noi", g3, a3)
            pending.append(("d", per_sample.square().sum(0), batch))

        return hook

    def update_factors(self) -> None:
        """Fold the batch statistics cached by the hooks into the running averages."""
        for name, pending in self._pending.items():
            for kind, value, count in pending:
                stats = self._stats_of(name)
                value = value.to(stats.a_sum.dtype)
                if kind == "a":
                    stats.a_sum += value
                    stats.a_rows += count
                elif kind == "g":
                    stats.g_sum += value
                    stats.g_samples += count
                else:
                    stats.diag_sum += value
                    stats.diag_samples += count
        self._pending.clear()

    def _stats_of(self, name: str) -> _Stats:
        if name not in self._stats:
            m = self.modules[name]
            n_out, n_in = m.weight.shape[0], m.weight[0].numel() + (m.bias is not None)
            kw: dict[str, Any] = {"dtype": torch.float64, "device": m.weight.device}
            self._stats[name] = _Stats(
                a_sum=torch.zeros(n_in, n_in, **kw),
                g_sum=torch.zeros(n_out, n_out, **kw),
                diag_sum=torch.zeros(n_out, n_in, **kw),
            )
        return self._stats[name]

    def accumulate(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        criterion: Criterion | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        """Run one forward/backward pass on a batch and fold its statistics in.

        Parameter ``.grad`` fields are left untouched (gradients are taken with
        :func:`torch.autograd.grad`).

        Args:
            x: Inputs.
            y: Data labels (used when ``fisher == "empirical"``).
            criterion: Batch-mean loss ``f(logits, labels)``; cross-entropy when None.
            generator: Seeds the label sampling of the true Fisher.
        """
        loss_fn: Criterion = criterion if criterion is not None else F.cross_entropy
        self.register_hooks()
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            logits = self.model(x)
            if self.fisher == "true":
                probs = torch.softmax(logits.detach().double(), dim=-1)
                cpu_probs = probs.reshape(-1, probs.shape[-1]).cpu()
                labels = torch.multinomial(cpu_probs, 1, generator=generator)
                target = labels.reshape(probs.shape[:-1]).to(logits.device)
            else:
                target = y
            loss = loss_fn(logits, target)
            if params:
                torch.autograd.grad(loss, params, allow_unused=True)
        self.update_factors()

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Undamped factors ``(A, G)`` of a layer (float64).

        Raises:
            ConfigError: If ``name`` is not tracked or has no statistics yet.
        """
        stats = self._checked(name)
        return stats.a_sum / stats.a_rows, stats.g_sum / stats.g_samples

    def damped_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """π-damped factors ``(A + π√λ I, G + √λ/π I)`` of a layer (see the module doc)."""
        a, g = self.factors(name)
        root = math.sqrt(self.damping)
        tr_a = float(torch.trace(a)) / a.shape[0]
        tr_g = float(torch.trace(g)) / g.shape[0]
        pi = math.sqrt(tr_a / tr_g) if tr_a > 0 and tr_g > 0 else 1.0
        eye_a = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        eye_g = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
        return a + pi * root * eye_a, g + root / pi * eye_g

    def compute_fisher_diagonal(self, name: str, *, exact: bool = False) -> torch.Tensor:
        """Diagonal of the Fisher w.r.t. the layer's weight, shaped ``[out, in]``.

        Args:
            name: A tracked layer.
            exact: False gives the K-FAC diagonal ``outer(diag G, diag A)``; True gives the
                exact diagonal ``E[(∇W ℓ_n)²]`` of per-sample gradients, accumulated by the
                hooks (differs from K-FAC when ``a`` and ``g`` are correlated).
        """
        return self._fisher_diagonal_aug(name, exact=exact)[:, : _n_in(self.modules[name])]

    def _fisher_diagonal_aug(self, name: str, *, exact: bool) -> torch.Tensor:
        if exact:
            stats = self._checked(name)
            return stats.diag_sum / max(stats.diag_samples, 1)
        a, g = self.factors(name)
        return torch.outer(torch.diagonal(g), torch.diagonal(a))

    def _checked(self, name: str) -> _Stats:
        if name not in self.modules:
            raise ConfigError(
                f"layer must be one of the tracked layers {sorted(self.modules)[:5]}..., but "
                f"got {name!r}"
            )
        stats = self._stats.get(name)
        if stats is None or stats.a_rows == 0 or stats.g_samples == 0:
            raise ConfigError(
                f"layer {name!r} has no K-FAC statistics yet; expected forward and backward "
                "passes followed by update_factors()"
            )
        return stats

    def has_factors(self, name: str) -> bool:
        """Whether ``name`` is tracked and has both factors."""
        stats = self._stats.get(name)
        return stats is not None and stats.a_rows > 0 and stats.g_samples > 0


def _augment(a: torch.Tensor, bias: bool) -> torch.Tensor:
    a = a.double()
    if not bias:
        return a
    return torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)], dim=-1)


def _trackable(module: nn.Module) -> bool:
    """Whether K-FAC handles ``module``: a linear, or a plain 2-D convolution."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and not isinstance(module.padding, str)
        and module.padding_mode == "zeros"
    )


def _n_in(module: nn.Module) -> int:
    """Inputs of one output unit: ``in_features``, or ``in_channels·kh·kw`` of a conv."""
    weight: Any = module.weight
    return int(weight[0].numel())


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear's input as is; a conv's input as unfolded patches ``[B, positions, C·kh·kw]``."""
    if not isinstance(module, nn.Conv2d):
        return x
    conv: Any = module
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return cols.transpose(1, 2)


def _positions_last(grad: torch.Tensor) -> torch.Tensor:
    """An output gradient with channels last: a conv's ``[B, C, H, W]`` becomes ``[B, HW, C]``."""
    if grad.dim() == 4:
        return grad.flatten(2).transpose(1, 2)
    return grad


def _weight_aug(module: nn.Module) -> torch.Tensor:
    layer: Any = module
    w = layer.weight.detach().double().flatten(1)
    if layer.bias is None:
        return w
    return torch.cat([w, layer.bias.detach().double()[:, None]], dim=1)


class HOBSSensitivityAnalyzer:
    """OBS saliencies of the rows (output units) and columns of every ``nn.Linear``.

    Args:
        model: The network.
        damping: λ of the π-damping (see the module docstring).
        use_kfac: True: K-FAC OBS saliency ``½ (w̃_iᵀ A w̃_i) / (G⁻¹)_ii``. False: the
            diagonal-Fisher (OBD) saliency ``½ Σ_j w̃_ij² F_ij`` with the exact diagonal
            of per-sample gradients.
        fisher: Which Fisher (see :class:`KFACHessianApproximator`).
        layers: Restrict to these qualified ``nn.Linear`` names.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        damping: float = 1e-3,
        use_kfac: bool = True,
        fisher: FisherKind = "true",
        layers: list[str] | None = None,
    ) -> None:
        self.model = model
        self.use_kfac = use_kfac
        self.kfac = KFACHessianApproximator(model, damping=damping, layers=layers, fisher=fisher)
        self.row_saliency: dict[str, torch.Tensor] = {}
        self.column_saliency: dict[str, torch.Tensor] = {}

    @property
    def module_names(self) -> dict[nn.Module, str]:
        """Tracked module → its qualified name."""
        return {m: n for n, m in self.kfac.modules.items()}

    def compute_sensitivity(
        self,
        data: Iterable[Any] | Dataset,
        criterion: Criterion | None = None,
        num_batches: int = 10,
        *,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Fit the factors on some batches and return the per-row saliencies.

        The model runs in eval mode (its mode is restored) and ``.grad`` is not touched.

        Args:
            data: A DataLoader (or any iterable) yielding ``(x, y)``, or a
                :class:`hamnet.training.data.Dataset` (its training split, shuffled by ``seed``, in
                batches of 64).
            criterion: Batch-mean loss ``f(logits, labels)``; cross-entropy when None.
            num_batches: Batches to use (fewer if the data runs out).
            seed: Seeds the shuffling of a Dataset and the true-Fisher label sampling.

        Returns:
            Layer name → saliency of each output row, ``float64 [out_features]``.

        Raises:
            ConfigError: If ``num_batches`` is not positive.
            DataError: If the data yields no batch.
        """
        if num_batches < 1:
            raise ConfigError(f"num_batches must be at least 1, but got {num_batches}")
        device = next(self.model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        used = 0
        try:
            self.kfac.register_hooks()
            for x, y in _batches(data, seed):
                if used >= num_batches:
                    break
                self.kfac.accumulate(x.to(device), y.to(device), criterion, generator=generator)
                used += 1
        finally:
            self.kfac.remove_hooks()
            self.model.train(was_training)
        if used == 0:
            raise DataError("sensitivity analysis needs at least one (x, y) batch, but got none")
        self._score()
        return dict(self.row_saliency)

    def _score(self) -> None:
        self.row_saliency.clear()
        self.column_saliency.clear()
        for name, module in self.kfac.modules.items():
            if not self.kfac.has_factors(name):
                continue
            w = _weight_aug(module)
            n_in = _n_in(module)
            if self.use_kfac:
                a, g = self.kfac.damped_factors(name)
                g_inv = torch.diagonal(torch.linalg.inv(g))
                a_inv = torch.diagonal(torch.linalg.inv(a))[:n_in]
                rows = 0.5 * torch.einsum("oi,ij,oj->o", w, a, w) / g_inv
                cols = 0.5 * torch.einsum("oi,op,pi->i", w[:, :n_in], g, w[:, :n_in]) / a_inv
            else:
                diag = self.kfac._fisher_diagonal_aug(name, exact=True)
                rows = 0.5 * (w.square() * diag).sum(1)
                cols = 0.5 * (w[:, :n_in].square() * diag[:, :n_in]).sum(0)
            if isinstance(module, nn.Conv2d):  # one score per input channel
                cols = cols.reshape(module.in_channels, -1).sum(1)
            self.row_saliency[name] = rows
            self.column_saliency[name] = cols

    def _require_scores(self) -> None:
        if not self.row_saliency:
            raise ConfigError(
                "no saliencies yet; expected compute_sensitivity() to be called first"
            )

    def head_scores(self, model: nn.Module) -> list[torch.Tensor]:
        """Per HAMNet block, the saliency of each attention head.

        A head's score is the sum of the ``q_proj``/``k_proj``/``v_proj`` row saliencies
        over the head's ``head_dim`` rows.

        Returns:
            One ``[num_heads]`` tensor per block.
        """
        self._require_scores()
        return [self._head_saliency(block.attn) for block in _blocks_of(model)]

    def ffn_scores(self, model: nn.Module) -> list[torch.Tensor]:
        """Per HAMNet block, the saliency of each FFN channel.

        A channel's score is its ``fc1`` row saliency plus its ``fc2`` column saliency.

        Returns:
            One ``[ffn_width]`` tensor per block.
        """
        self._require_scores()
        return [self._ffn_saliency(block.ffn) for block in _blocks_of(model)]

    def _head_saliency(self, attn: Any) -> torch.Tensor:
        total = torch.zeros(attn.num_heads, dtype=torch.float64)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            rows = self.row_saliency.get(self.module_names.get(proj, ""))
            if rows is not None:
                total += rows.cpu().reshape(attn.num_heads, attn.head_dim).sum(1)
        return total

    def _ffn_saliency(self, ffn: Any) -> torch.Tensor:
        total = torch.zeros(ffn.fc1.out_features, dtype=torch.float64)
        rows = self.row_saliency.get(self.module_names.get(ffn.fc1, ""))
        cols = self.column_saliency.get(self.module_names.get(ffn.fc2, ""))
        for scores in (rows, cols):
            if scores is not None:
                total += scores.cpu()
        return total

    def get_pruning_plan(self, pruning_ratio: float = 0.5) -> dict[str, list[int]]:
        """The lowest-saliency rows of each layer.

        Args:
            pruning_ratio: Fraction of rows to remove, in ``(0, 1)``; ``floor(ratio·rows)``
                rows are chosen, and at least one row stays.

        Returns:
            Layer name → row indices to prune, ascending.

        Raises:
            ConfigError: If the ratio is outside ``(0, 1)`` or no saliencies exist yet.
        """
        if not 0.0 < pruning_ratio < 1.0:
            raise ConfigError(f"pruning_ratio must be in (0, 1), but got {pruning_ratio}")
        self._require_scores()
        plan = {}
        for name, scores in self.row_saliency.items():
            count = min(math.floor(pruning_ratio * len(scores)), len(scores) - 1)
            order = torch.argsort(scores, stable=True)[:count]
            plan[name] = sorted(int(i) for i in order)
        return plan


def _blocks_of(model: nn.Module) -> list[Any]:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError(
            f"expected a HAMNet (a model with .blocks), but got {type(model).__name__}"
        )
    return list(blocks)


def _batches(data: Iterable[Any] | Dataset, seed: int) -> Iterator[tuple[torch.Tensor, Any]]:
    if isinstance(data, Dataset):
        order = np.random.default_rng(seed).permutation(len(data.x_train))
        for start in range(0, len(order), _DATASET_BATCH_SIZE):
            index = order[start : start + _DATASET_BATCH_SIZE]
            x = torch.from_numpy(np.ascontiguousarray(data.x_train[index], dtype=np.float32))
            y = torch.from_numpy(np.asarray(data.y_train[index], dtype=np.int64))
            yield x, y
        return
    for batch in data:
        x, y = batch[0], batch[1]
        yield torch.as_tensor(x), torch.as_tensor(y)


@functools.cache
def hessian_importance_class() -> type:
    """The ``HessianImportance`` class (a ``torch_pruning.importance.Importance``).

    Built on first use so that importing this module does not import torch-pruning;
    ``from hamnet.compress.pruning.hessian import HessianImportance`` also works.
    """

    class HessianImportance(linear_scores_importance_base()):  # type: ignore[misc]
        """torch-pruning importance from the analyzer's OBS saliencies.

        For each member of a group it adds the saliency of the pruned rows (output
        pruning of an ``nn.Linear``) or columns (input pruning) of that layer; members
        without saliencies contribute zero. Scores are not normalised, so they stay
        comparable across groups (global pruning).

        Args:
            analyzer: A fitted :class:`HOBSSensitivityAnalyzer`.
        """

        what = "saliencies"

        def __init__(self, analyzer: HOBSSensitivityAnalyzer) -> None:
            analyzer._require_scores()
            self.analyzer = analyzer
            self._names = analyzer.module_names

        def _row_scores(self, name: str) -> torch.Tensor | None:
            return self.analyzer.row_saliency.get(name)

        def _column_scores(self, name: str) -> torch.Tensor | None:
            return self.analyzer.column_saliency.get(name)

    return HessianImportance


def __getattr__(name: str) -> Any:
    if name == "HessianImportance":
        return hessian_importance_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fit_analyzer(
    model: nn.Module,
    dataset: Dataset | Iterable[Any],
    *,
    num_batches: int = 8,
    damping: float = 1e-3,
    seed: int = 0,
    use_kfac: bool = True,
) -> HOBSSensitivityAnalyzer:
    """Build an analyzer on every ``nn.Linear`` of ``model`` and fit it on ``dataset``."""
    analyzer = HOBSSensitivityAnalyzer(model, damping=damping, use_kfac=use_kfac)
    analyzer.compute_sensitivity(dataset, num_batches=num_batches, seed=seed)
    return analyzer


def make_hessian_importance(
    model: nn.Module,
    dataset: Dataset | Iterable[Any],
    *,
    num_batches: int = 8,
    damping: float = 1e-3,
    seed: int = 0,
) -> Any:
    """The ``"hessian"`` pruning criterion: fit K-FAC on ``model`` and wrap it.

    Args:
        model: The model about to be pruned (the importance is tied to its modules).
        dataset: Calibration data (a Dataset or an iterable of ``(x, y)``).
        num_batches: Calibration batches.
        damping: λ of the π-damping.
        seed: Seeds batch order and label sampling.

    Returns:
        A ``HessianImportance`` instance.
    """
    analyzer = fit_analyzer(model, dataset, num_batches=num_batches, damping=damping, seed=seed)
    return hessian_importance_class()(analyzer)


def sensitivity_layer_ratios(
    model: nn.Module,
    dataset: Dataset | Iterable[Any],
    ratio: float,
    *,
    num_batches: int = 8,
    damping: float = 1e-3,
    seed: int = 0,
    max_layer_ratio: float = 0.9,
) -> list[float]:
    """Per-block removal fractions that spend ``ratio``'s budget, sparing sensitive blocks.

    Rule: block ``i``'s sensitivity is ``s_i = ½ (mean head score_i / mean head score over
    blocks + mean FFN score_i / mean FFN score over blocks)``, its unclipped ratio is
    ``c / s_i``, and ``c`` is chosen so the size-weighted mean (weights: parameters of the
    block's q/k/v/out projections and FFN) equals ``ratio``; ratios above
    ``max_layer_ratio`` are clipped to it and ``c`` is re-solved on the rest until none
    exceeds it. If ``ratio > max_layer_ratio`` the budget is infeasible and every block
    gets ``max_layer_ratio``.

    Args:
        model: A HAMNet (not modified; its mode is restored).
        dataset: Calibration data.
        ratio: Overall fraction to remove, in ``[0, 1)``.
        num_batches: Calibration batches.
        damping: λ of the π-damping.
        seed: Seeds batch order and label sampling.
        max_layer_ratio: Upper bound of each block's ratio, in ``(0, 1)``.

    Returns:
        One ratio per block, each in ``[0, max_layer_ratio]``.

    Raises:
        ConfigError: If ``ratio`` or ``max_layer_ratio`` is out of range.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio must be in [0, 1), but got {ratio}")
    if not 0.0 < max_layer_ratio < 1.0:
        raise ConfigError(f"max_layer_ratio must be in (0, 1), but got {max_layer_ratio}")
    blocks = _blocks_of(model)
    if ratio == 0.0:
        return [0.0] * len(blocks)
    analyzer = fit_analyzer(model, dataset, num_batches=num_batches, damping=damping, seed=seed)
    heads = np.array([float(s.mean()) for s in analyzer.head_scores(model)])
    ffn = np.array([float(s.mean()) for s in analyzer.ffn_scores(model)])
    sens = 0.5 * (heads / max(heads.mean(), _EPS) + ffn / max(ffn.mean(), _EPS))
    weights = np.array([_block_size(b) for b in blocks], dtype=np.float64)
    return _allocate(1.0 / np.maximum(sens, _EPS), weights, ratio, max_layer_ratio)


def _block_size(block: Any) -> int:
    attn, ffn = block.attn, block.ffn
    modules = (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, ffn.fc1, ffn.fc2)
    return sum(p.numel() for m in modules for p in m.parameters())


def _allocate(preference: np.ndarray, weights: np.ndarray, ratio: float, cap: float) -> list[float]:
    """Ratios ``∝ preference`` with weighted mean ``ratio``, clipped at ``cap`` (water-filling)."""
    if ratio >= cap:
        return [cap] * len(preference)
    total = ratio * weights.sum()
    clipped = np.zeros(len(preference), dtype=bool)
    ratios = np.zeros(len(preference))
    for _ in range(len(preference) + 1):
        free = ~clipped
        budget = total - cap * weights[clipped].sum()
        scale = budget / (weights[free] * preference[free]).sum()
        ratios = np.where(clipped, cap, scale * preference)
        over = free & (ratios > cap)
        if not over.any():
            break
        clipped |= over
    return [float(r) for r in np.clip(ratios, 0.0, cap)]


def allocate_by_preference(
    preference: np.ndarray, weights: np.ndarray, ratio: float, cap: float
) -> list[float]:
    """Ratios proportional to ``preference`` whose ``weights``-weighted mean is ``ratio``.

    Ratios above ``cap`` are clipped to it and the rest re-solved (water-filling); if
    ``ratio >= cap`` every ratio is ``cap``.
    """
    return _allocate(preference, weights, ratio, cap)


def fit_module_analyzer(
    model: nn.Module,
    losses: Iterable[Callable[[nn.Module], torch.Tensor]],
    *,
    damping: float = 1e-3,
) -> HOBSSensitivityAnalyzer:
    """Fit K-FAC on every linear and plain convolution of ANY module.

    Args:
        model: The network (its mode is restored; ``.grad`` is not touched).
        losses: One callable per calibration batch, returning the batch-MEAN loss of the
            model it is given with targets drawn from the model's own predictive
            distribution (the true Fisher; see the module docstring).
        damping: λ of the π-damping.

    Returns:
        The fitted analyzer (``row_saliency``: one score per output neuron or filter;
        ``column_saliency``: one per input neuron or input channel).

    Raises:
        DataError: If ``losses`` is empty.
    """
    analyzer = HOBSSensitivityAnalyzer(model, damping=damping)
    kfac = analyzer.kfac
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    used = 0
    try:
        kfac.register_hooks()
        for loss_of in losses:
            with torch.enable_grad():
                loss = loss_of(model)
                if params:
                    torch.autograd.grad(loss, params, allow_unused=True)
            kfac.update_factors()
            used += 1
    finally:
        kfac.remove_hooks()
        model.train(was_training)
    if used == 0:
        raise DataError("the hessian criterion needs at least one calibration batch, but got none")
    analyzer._score()
    return analyzer


@functools.cache
def module_hessian_importance_class() -> type:
    """The ``ModuleHessianImportance`` class (a ``torch_pruning.importance.Importance``).

    Like ``HessianImportance`` but for any module: the members of a group that prune the
    output (rows) or input (columns) of a tracked ``nn.Linear`` or ``nn.Conv2d`` add the
    OBS saliencies of the removed units at the group's root indices (seed 003: a
    saliency per convolution filter and per linear neuron). Scores are not normalised,
    so they stay comparable across groups (global ranking).
    """
    import torch_pruning as tp

    function = tp.pruner.function
    rows_fns = {function.prune_linear_out_channels, function.prune_conv_out_channels}
    cols_fns = {function.prune_linear_in_channels, function.prune_conv_in_channels}

    class ModuleHessianImportance(tp.importance.Importance):  # type: ignore[misc]
        """Group importance summed from K-FAC/OBS saliencies of linears and convolutions.

        Args:
            analyzer: A fitted :class:`HOBSSensitivityAnalyzer` (see
                :func:`fit_module_analyzer`).
        """

        def __init__(self, analyzer: HOBSSensitivityAnalyzer) -> None:
            analyzer._require_scores()
            self.analyzer = analyzer
            self._names = analyzer.module_names

        def __call__(self, group: Any) -> torch.Tensor | None:
            total = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            found = False
            for i, (dep, idxs) in enumerate(group):
                name = self._names.get(dep.layer)
                root_idxs = group[i].root_idxs
                if name is None or any(r is None for r in root_idxs):
                    continue
                if dep.pruning_fn in rows_fns:
                    scores = self.analyzer.row_saliency.get(name)
                    width = dep.layer.weight.shape[0]
                elif dep.pruning_fn in cols_fns:
                    scores = self.analyzer.column_saliency.get(name)
                    width = dep.layer.weight.shape[1]
                else:
                    continue
                if scores is None:
                    continue
                if len(scores) != width:
                    raise ConfigError(
                        f"saliencies of {name!r} cover {len(scores)} channels, but the layer "
                        f"now has {width}; fit them again after pruning"
                    )
                local = scores.cpu()[torch.as_tensor(list(idxs), dtype=torch.long)]
                total.scatter_add_(0, torch.as_tensor(list(root_idxs), dtype=torch.long), local)
                found = True
            return total.float() if found else None

    return ModuleHessianImportance


def make_module_hessian_importance(
    model: nn.Module,
    losses: Iterable[Callable[[nn.Module], torch.Tensor]],
    *,
    damping: float = 1e-3,
) -> Any:
    """The ``"hessian"`` criterion for ANY module: fit K-FAC and wrap the saliencies.

    Args:
        model: The module about to be pruned (the importance is tied to its layers).
        losses: Per calibration batch, a callable giving the batch-mean loss with
            targets drawn from the model (see :func:`fit_module_analyzer`).
        damping: λ of the π-damping.

    Returns:
        A ``ModuleHessianImportance`` instance.
    """
    analyzer = fit_module_analyzer(model, losses, damping=damping)
    return module_hessian_importance_class()(analyzer)
