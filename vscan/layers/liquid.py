"""Liquid networks: LTC and CfC cells, ncps-style sequence layers, wirings, and the liquid scan.

Three families, all token-major ``(batch, length, channels)`` by default:

* :class:`LTCCell` / :class:`LTC` -- the liquid time-constant network (Hasani et al. 2021).
  Per neuron ``i`` the membrane ODE is::

      cm_i dv_i/dt = gleak_i (vleak_i - v_i)
                     + sum_j  w_ji  sigmoid(sigma_ji (v_j - mu_ji)) (erev_ji - v_i)     (recurrent)
                     + sum_k sw_ki sigmoid(ssigma_ki (x_k - smu_ki)) (serev_ki - v_i)   (sensory)

  i.e. ``dv/dt = -[1/tau + f] v + f A`` with a state- and input-dependent conductance ``f``.
  One input step of length ``dt`` is split into ``ode_unfolds`` (6) sub-steps of the *fused
  semi-implicit* Euler scheme: the conductances are taken at the old state (explicit), the
  ``-v_i`` factors at the new one (implicit), which gives the closed update ``v' = num / den``
  with only positive weights. Hence ``v'`` is a convex combination of ``v``, ``vleak`` and the
  reversal potentials and the state stays bounded whatever the step size. The scheme is first
  order: the error against the exact ODE solution over one input step shrinks like
  ``dt / ode_unfolds`` (see tests/test_liquid.py).

* :class:`CfCCell` / :class:`CfC` -- closed-form continuous-time cells (Hasani et al. 2022):
  no ODE solver; the elapsed time enters a sigmoid time gate (``default`` / ``no_gate``) or the
  exponential of the direct solution (``pure``).

* :class:`LiquidScan` (mixer ``'liquid'``) and :func:`liquid_scan` -- the LTC variant whose
  conductance depends only on the input. Between two samples the ODE is then *linear* in the
  state with frozen coefficients, so its exact solution is the selective-scan recurrence with a
  per-token step size ``Delta = time gap * learned rate``; it runs on
  :func:`vscan.ops.selective_scan`, i.e. in parallel over the sequence on a GPU.

Time gaps (``timespans``) are the time elapsed since the previous sample (for the first step:
since the initial state); they must be finite and >= 0. 1.0 everywhere when not given.

Both mixers (:class:`LiquidScan`, :class:`CfCMixer`) also follow the *recurrent-mixer
protocol* the language-model stacks use for cached generation (see
:func:`vscan.models.lm.base.is_recurrent_mixer`): ``allocate_state(batch, device, dtype)``
returns a constant-size state object with ``nbytes()``; ``forward(x, state=state)`` continues
the sequence from that state and advances it in place; ``step(x_t, state)`` does one token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from vscan.ops._checks import check_tensor, describe

from .mamba import init_conv_, init_dt_proj_, s4d_real_A_log
from .registry import register_mixer

__all__ = [
    "Wiring", "FullyConnected", "NCP", "AutoNCP",
    "LTCCell", "LTC", "CfCCell", "CfC", "CfCMixer", "CfCState",
    "LiquidScan", "LiquidScanState", "liquid_scan", "check_timespans",
]


# --------------------------------------------------------------------------------------------
# input checks shared by the layers
# --------------------------------------------------------------------------------------------

def _check_pos_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v}")
    return int(v)


def _as_sequence(x, input_size: int, batch_first: bool, name: str = "input"):
    """Return (x as (batch, length, features), unbatched flag). Accepts 3-D or unbatched 2-D."""
    check_tensor(name, x)
    if x.dim() == 2:
        x, unbatched = x.unsqueeze(0), True
    elif x.dim() == 3:
        unbatched = False
        if not batch_first:
            x = x.transpose(0, 1)
    else:
        order = "(batch, length, features)" if batch_first else "(length, batch, features)"
        raise ValueError(f"{name}: expected a 3-D tensor {order} or an unbatched 2-D (length, features), "
                         f"got {describe(x)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"{name}: expected {input_size} features in the last dimension, got {describe(x)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected a sequence of length >= 1, got {describe(x)}")
    return x, unbatched


def check_timespans(timespans, batch: int, length: int, dtype=torch.float32, device=None,
                    name: str = "timespans") -> torch.Tensor:
    """Validate per-step time gaps and return them as a (batch, length) tensor.

    Accepts None (all 1.0), a Python number, or a tensor of shape (batch, length),
    (batch, length, 1), (length,) (shared by the batch) or a 0-d tensor. Gaps must be finite and
    >= 0 (a gap of 0 leaves the state unchanged)."""
    if timespans is None:
        return torch.ones(batch, length, dtype=dtype, device=device)
    if isinstance(timespans, (int, float)) and not isinstance(timespans, bool):
        if not math.isfinite(timespans) or timespans < 0:
            raise ValueError(f"{name}: time gaps must be finite and >= 0, got {timespans!r}")
        return torch.full((batch, length), float(timespans), dtype=dtype, device=device)
    check_tensor(name, timespans)
    ts = timespans
    if ts.dim() == 3 and ts.shape[-1] == 1:
        ts = ts[..., 0]
    if ts.dim() == 0:
        ts = ts.expand(batch, length)
    elif ts.dim() == 1 and ts.shape[0] == length:
        ts = ts.unsqueeze(0).expand(batch, length)
    if ts.dim() != 2 or tuple(ts.shape) != (batch, length):
        raise ValueError(f"{name}: expected shape (batch, length)=({batch}, {length}) (or (batch, length, 1), "
                         f"(length,), a number), got {describe(timespans)}")
    if ts.device.type != "meta":
        if not bool(torch.isfinite(ts).all()):
            raise ValueError(f"{name}: time gaps must be finite, got non-finite values")
        if bool((ts < 0).any()):
            raise ValueError(f"{name}: time gaps must be >= 0, got a minimum of {float(ts.min()):.4g}")
    return ts.to(dtype=dtype, device=device if device is not None else ts.device)


def _step_times(t, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """Time gap of one step for a cell: a number, a 0-d tensor, or (batch,) / (batch, 1)."""
    if isinstance(t, torch.Tensor):
        if t.dim() == 0:
            t = t.reshape(1, 1).expand(batch, 1)
        elif t.dim() in (1, 2) and t.shape[0] == batch and (t.dim() == 1 or t.shape[1] == 1):
            t = t.reshape(batch, 1)
        else:
            raise ValueError(f"{name}: expected a number or a tensor of shape (batch,)=({batch},), "
                             f"got {describe(t)}")
    return check_timespans(t, batch, 1, like.dtype, like.device, name=name)[:, 0]


def _check_cell_step(inputs, in_features: int, state, state_name: str, units: int, t, t_name: str):
    """One cell step's arguments: inputs (batch, in_features), the state (batch, units) or None,
    and the time gap(s). Returns the checked state and per-sample gaps."""
    check_tensor("inputs", inputs)
    if inputs.dim() != 2 or inputs.shape[1] != in_features:
        raise ValueError(f"inputs: expected (batch, {in_features}), got {describe(inputs)}")
    b = inputs.shape[0]
    return _check_state(state_name, state, b, units, False, inputs), _step_times(t, b, inputs, t_name)


def _check_state(name: str, hx, batch: int, units: int, unbatched: bool, like: torch.Tensor):
    if hx is None:
        return like.new_zeros(batch, units)
    check_tensor(name, hx)
    if unbatched and hx.dim() == 1:
        hx = hx.unsqueeze(0)
    if tuple(hx.shape) != (batch, units):
        raise ValueError(f"{name}: expected the initial state of shape (batch, units)=({batch}, {units}), "
                         f"got {describe(hx)}")
    return hx.to(like.dtype)


# --------------------------------------------------------------------------------------------
# wirings: who connects to whom, and with which polarity
# --------------------------------------------------------------------------------------------

class Wiring:
    """Connectivity of ``units`` neurons plus their sensory inputs.

    ``adjacency[src, dst]`` and ``sensory_adjacency[input, dst]`` hold the synapse polarity
    (+1 excitatory, -1 inhibitory, 0 no synapse); their absolute values are the masks a cell
    multiplies its weights with. Neurons ``0 .. output_dim-1`` are the output (motor) neurons.
    The sensory part is created by :meth:`build` once the input size is known.
    """

    def __init__(self, units: int, output_dim: int | None = None):
        self.units = _check_pos_int("units", units)
        output_dim = self.units if output_dim is None else _check_pos_int("output_dim", output_dim)
        if output_dim > self.units:
            raise ValueError(f"output_dim: must be <= units ({self.units}), got {output_dim}")
        self.output_dim = output_dim
        self.adjacency = np.zeros((self.units, self.units), dtype=np.int8)
        self.sensory_adjacency: np.ndarray | None = None
        self.input_dim: int | None = None

    # -- construction ---------------------------------------------------------------------
    def add_synapse(self, src: int, dst: int, polarity: int):
        if polarity not in (-1, 1):
            raise ValueError(f"polarity: expected -1 or +1, got {polarity!r}")
        for nm, v in (("src", src), ("dst", dst)):
            if not 0 <= v < self.units:
                raise ValueError(f"{nm}: neuron index must be in [0, {self.units}), got {v}")
        self.adjacency[src, dst] = polarity

    def add_sensory_synapse(self, src: int, dst: int, polarity: int):
        if self.sensory_adjacency is None:
            raise ValueError("add_sensory_synapse: call build(input_dim) first")
        if polarity not in (-1, 1):
            raise ValueError(f"polarity: expected -1 or +1, got {polarity!r}")
        if not 0 <= src < self.input_dim or not 0 <= dst < self.units:
            raise ValueError(f"sensory synapse ({src} -> {dst}) out of range: inputs {self.input_dim}, "
                             f"units {self.units}")
        self.sensory_adjacency[src, dst] = polarity

    def build(self, input_dim: int) -> "Wiring":
        """Create the sensory synapses for ``input_dim`` inputs (idempotent for the same size)."""
        input_dim = _check_pos_int("input_dim", input_dim)
        if self.input_dim is not None:
            if self.input_dim != input_dim:
                raise ValueError(f"input_dim: this wiring was built for {self.input_dim} inputs, got {input_dim}; "
                                 f"use a fresh wiring per layer")
            return self
        self.input_dim = input_dim
        self.sensory_adjacency = np.zeros((input_dim, self.units), dtype=np.int8)
        self._build_sensory()
        return self

    def _build_sensory(self):  # overridden by subclasses
        raise NotImplementedError

    @property
    def is_built(self) -> bool:
        return self.input_dim is not None

    # -- views ------------------------------------------------------------------------------
    def mask(self) -> torch.Tensor:
        return torch.from_numpy(np.abs(self.adjacency).astype(np.float32))

    def sensory_mask(self) -> torch.Tensor:
        self._require_built()
        return torch.from_numpy(np.abs(self.sensory_adjacency).astype(np.float32))

    def erev(self) -> torch.Tensor:
        return torch.from_numpy(self.adjacency.astype(np.float32))

    def sensory_erev(self) -> torch.Tensor:
        self._require_built()
        return torch.from_numpy(self.sensory_adjacency.astype(np.float32))

    def synapse_count(self) -> int:
        return int(np.abs(self.adjacency).sum())

    def sensory_synapse_count(self) -> int:
        self._require_built()
        return int(np.abs(self.sensory_adjacency).sum())

    def _require_built(self):
        if not self.is_built:
            raise ValueError(f"{type(self).__name__}: the wiring is not built; call build(input_dim) first")

    def __repr__(self):
        s = f"{type(self).__name__}(units={self.units}, output_dim={self.output_dim}"
        if self.is_built:
            s += f", input_dim={self.input_dim}, synapses={self.synapse_count()}+{self.sensory_synapse_count()}"
        return s + ")"


def _polarities(rng: np.random.Generator, n) -> np.ndarray:
    """Random synapse signs, two thirds excitatory."""
    return rng.choice(np.array([-1, 1, 1], dtype=np.int8), size=n)


class FullyConnected(Wiring):
    """Every neuron (and every input) connects to every neuron, with random fixed polarity."""

    def __init__(self, units: int, output_dim: int | None = None, erev_init_seed: int = 1111,
                 self_connections: bool = True):
        super().__init__(units, output_dim)
        self._rng = np.random.default_rng(erev_init_seed)
        self.adjacency[:] = _polarities(self._rng, (self.units, self.units))
        if not self_connections:
            np.fill_diagonal(self.adjacency, 0)

    def _build_sensory(self):
        self.sensory_adjacency[:] = _polarities(self._rng, (self.input_dim, self.units))


class NCP(Wiring):
    """Neural-circuit-policy wiring: sensory -> inter -> command (recurrent) -> motor, sparse.

    Neuron order: motor ``[0, motor)``, command ``[motor, motor+command)``, inter after that.
    Each input reaches ``sensory_fanout`` inter neurons, each inter neuron ``inter_fanout``
    command neurons, each motor neuron reads ``motor_fanin`` command neurons, and
    ``recurrent_command_synapses`` random command -> command synapses are added. Neurons that
    the random draw left without an input (or an output) get one, so no neuron is dead.
    """

    def __init__(self, inter_neurons: int, command_neurons: int, motor_neurons: int, sensory_fanout: int,
                 inter_fanout: int, recurrent_command_synapses: int, motor_fanin: int, seed: int = 22222):
        inter = _check_pos_int("inter_neurons", inter_neurons)
        command = _check_pos_int("command_neurons", command_neurons)
        motor = _check_pos_int("motor_neurons", motor_neurons)
        super().__init__(inter + command + motor, output_dim=motor)
        self.motor = list(range(motor))
        self.command = list(range(motor, motor + command))
        self.inter = list(range(motor + command, motor + command + inter))
        self.sensory_fanout = _check_pos_int("sensory_fanout", sensory_fanout)
        self.inter_fanout = _check_pos_int("inter_fanout", inter_fanout)
        self.recurrent_command_synapses = _check_pos_int("recurrent_command_synapses",
                                                         recurrent_command_synapses, 0)
        self.motor_fanin = _check_pos_int("motor_fanin", motor_fanin)
        if self.sensory_fanout > inter:
            raise ValueError(f"sensory_fanout: must be <= inter_neurons ({inter}), got {sensory_fanout}")
        if self.inter_fanout > command:
            raise ValueError(f"inter_fanout: must be <= command_neurons ({command}), got {inter_fanout}")
        if self.motor_fanin > command:
            raise ValueError(f"motor_fanin: must be <= command_neurons ({command}), got {motor_fanin}")
        self._rng = np.random.default_rng(seed)
        self._connect_layers(self.inter, self.command, self.inter_fanout, self.add_synapse)
        for _ in range(self.recurrent_command_synapses):
            src, dst = self._rng.choice(self.command, size=2, replace=True)
            self.add_synapse(int(src), int(dst), int(_polarities(self._rng, 1)[0]))
        # command -> motor by fan-in
        for dst in self.motor:
            for src in self._rng.choice(self.command, size=self.motor_fanin, replace=False):
                self.add_synapse(int(src), dst, int(_polarities(self._rng, 1)[0]))
        for src in self.command:  # every command neuron drives some motor neuron
            if not np.abs(self.adjacency[src, self.motor]).any():
                self.add_synapse(src, int(self._rng.choice(self.motor)), int(_polarities(self._rng, 1)[0]))

    def _connect_layers(self, sources, targets, fanout, add):
        for src in sources:
            for dst in self._rng.choice(targets, size=fanout, replace=False):
                add(int(src), int(dst), int(_polarities(self._rng, 1)[0]))

    def _build_sensory(self):
        add = self.add_sensory_synapse
        self._connect_layers(range(self.input_dim), self.inter, self.sensory_fanout, add)
        for dst in self.inter:  # every inter neuron hears some input
            if not np.abs(self.sensory_adjacency[:, dst]).any():
                add(int(self._rng.integers(self.input_dim)), dst, int(_polarities(self._rng, 1)[0]))
        for dst in self.command:  # and every command neuron some inter neuron
            if not np.abs(self.adjacency[self.inter, dst]).any():
                self.add_synapse(int(self._rng.choice(self.inter)), dst, int(_polarities(self._rng, 1)[0]))


class AutoNCP(NCP):
    """An :class:`NCP` sized from ``units`` and ``output_size``; fan-outs scale with
    ``density = 1 - sparsity_level``. Needs ``output_size < units - 2``."""

    def __init__(self, units: int, output_size: int, sparsity_level: float = 0.5, seed: int = 22222):
        units = _check_pos_int("units", units)
        output_size = _check_pos_int("output_size", output_size)
        if output_size >= units - 2:
            raise ValueError(f"output_size: must be < units - 2 = {units - 2}, got {output_size}")
        if not 0.0 < float(sparsity_level) < 1.0:
            raise ValueError(f"sparsity_level: expected a float in (0, 1), got {sparsity_level!r}")
        density = 1.0 - float(sparsity_level)
        command = max(int(0.4 * (units - output_size)), 1)
        inter = units - output_size - command
        super().__init__(inter, command, output_size,
                         sensory_fanout=max(int(inter * density), 1),
                         inter_fanout=max(int(command * density), 1),
                         recurrent_command_synapses=max(int(command * density * 2), 1),
                         motor_fanin=max(int(command * density), 1), seed=seed)


def _as_wiring(units, name: str = "units") -> Wiring:
    if isinstance(units, Wiring):
        return units
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        return FullyConnected(int(units))
    raise TypeError(f"{name}: expected an int or a Wiring, got {type(units).__name__}")


# --------------------------------------------------------------------------------------------
# LTC
# --------------------------------------------------------------------------------------------

def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


_MAPPINGS = ("affine", "linear", None)


class LTCCell(nn.Module):
    """One input step of a liquid time-constant network (see the module docstring for the ODE).

    Args:
        wiring: a :class:`Wiring` (built here for ``in_features``) or an int for fully connected.
        in_features: number of inputs.
        input_mapping / output_mapping: 'affine' (x*w+b), 'linear' (x*w) or None, elementwise.
        ode_unfolds: semi-implicit sub-steps per input step.
        epsilon: added to the denominator of the fused update.
        implicit_param_constraints: keep ``w``, ``sensory_w``, ``cm`` and ``gleak`` positive by a
            softplus (True), or use them raw and clip with :meth:`apply_weight_constraints`
            after each optimizer step (False).
    Forward: ``cell(x (batch, in), state (batch, units), elapsed_time=1.0) -> (out, new_state)``
    with ``out`` the ``output_dim`` motor neurons after the output mapping.
    """

    def __init__(self, wiring: Wiring | int, in_features: int, input_mapping: str | None = "affine",
                 output_mapping: str | None = "affine", ode_unfolds: int = 6, epsilon: float = 1e-8,
                 implicit_param_constraints: bool = True):
        super().__init__()
        for nm, m in (("input_mapping", input_mapping), ("output_mapping", output_mapping)):
            if m not in _MAPPINGS:
                raise ValueError(f"{nm}: expected one of {_MAPPINGS}, got {m!r}")
        self.wiring = _as_wiring(wiring, "wiring").build(in_features)
        self.in_features = self.wiring.input_dim
        self.units = self.wiring.units
        self.output_dim = self.wiring.output_dim
        self.ode_unfolds = _check_pos_int("ode_unfolds", ode_unfolds)
        self.epsilon = float(epsilon)
        self.implicit = bool(implicit_param_constraints)
        self.input_mapping, self.output_mapping = input_mapping, output_mapping
        N, M = self.units, self.in_features
        self.gleak = nn.Parameter(torch.empty(N))
        self.vleak = nn.Parameter(torch.empty(N))
        self.cm = nn.Parameter(torch.empty(N))
        self.w = nn.Parameter(torch.empty(N, N))
        self.sigma = nn.Parameter(torch.empty(N, N))
        self.mu = nn.Parameter(torch.empty(N, N))
        self.erev = nn.Parameter(self.wiring.erev())
        self.sensory_w = nn.Parameter(torch.empty(M, N))
        self.sensory_sigma = nn.Parameter(torch.empty(M, N))
        self.sensory_mu = nn.Parameter(torch.empty(M, N))
        self.sensory_erev = nn.Parameter(self.wiring.sensory_erev())
        self.register_buffer("mask", self.wiring.mask())
        self.register_buffer("sensory_mask", self.wiring.sensory_mask())
        if input_mapping is not None:
            self.input_w = nn.Parameter(torch.ones(M))
            self.input_b = nn.Parameter(torch.zeros(M)) if input_mapping == "affine" else None
        if output_mapping is not None:
            self.output_w = nn.Parameter(torch.ones(self.output_dim))
            self.output_b = nn.Parameter(torch.zeros(self.output_dim)) if output_mapping == "affine" else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Initial ranges as in ncps: gleak (0.001, 1), vleak (-0.2, 0.2), cm (0.4, 0.6),
        w (0.001, 1), sigma (3, 8), mu (0.3, 0.8). Positive parameters are stored in
        inverse-softplus space when the constraints are implicit, so the *effective* values
        start in these ranges."""
        pos = _inv_softplus if self.implicit else (lambda t: t)
        self.gleak.copy_(pos(torch.empty_like(self.gleak).uniform_(0.001, 1.0)))
        self.vleak.uniform_(-0.2, 0.2)
        self.cm.copy_(pos(torch.empty_like(self.cm).uniform_(0.4, 0.6)))
        for w, s, m in ((self.w, self.sigma, self.mu), (self.sensory_w, self.sensory_sigma, self.sensory_mu)):
            w.copy_(pos(torch.empty_like(w).uniform_(0.001, 1.0)))
            s.uniform_(3.0, 8.0)
            m.uniform_(0.3, 0.8)

    def _positive(self, p):
        return F.softplus(p) if self.implicit else p

    @torch.no_grad()
    def apply_weight_constraints(self):
        """With ``implicit_param_constraints=False``: clip w, sensory_w, cm, gleak at 0."""
        if not self.implicit:
            for p in (self.w, self.sensory_w, self.cm, self.gleak):
                p.clamp_(min=0.0)

    def effective_params(self) -> dict:
        """The positive parameters as the ODE sees them (for inspection and tests)."""
        return dict(gleak=self._positive(self.gleak), vleak=self.vleak, cm=self._positive(self.cm),
                    w=self._positive(self.w) * self.mask, sigma=self.sigma, mu=self.mu, erev=self.erev,
                    sensory_w=self._positive(self.sensory_w) * self.sensory_mask,
                    sensory_sigma=self.sensory_sigma, sensory_mu=self.sensory_mu,
                    sensory_erev=self.sensory_erev)

    def map_inputs(self, x):
        if self.input_mapping is not None:
            x = x * self.input_w
            if self.input_b is not None:
                x = x + self.input_b
        return x

    def map_outputs(self, v):
        out = v[:, : self.output_dim]
        if self.output_mapping is not None:
            out = out * self.output_w
            if self.output_b is not None:
                out = out + self.output_b
        return out

    def solve(self, x, v, elapsed_time):
        """Advance state ``v`` (batch, units) by ``elapsed_time`` (batch,) under mapped input x.

        Per sub-step of length h = elapsed/unfolds (multiplied through by h, so h = 0 keeps v):
        ``v' = (cm v + h (gleak vleak + sum w_act erev)) / (cm + h (gleak + sum w_act) + eps)``.
        """
        p = self.effective_params()
        # sensory conductances depend on the input only: once per input step
        s_act = p["sensory_w"] * torch.sigmoid(p["sensory_sigma"] * (x.unsqueeze(-1) - p["sensory_mu"]))
        s_num = (s_act * p["sensory_erev"]).sum(1)
        s_den = s_act.sum(1)
        h = (elapsed_time / self.ode_unfolds).unsqueeze(-1)
        cm, gleak = p["cm"], p["gleak"]
        leak_num = gleak * p["vleak"]
        for _ in range(self.ode_unfolds):
            w_act = p["w"] * torch.sigmoid(p["sigma"] * (v.unsqueeze(-1) - p["mu"]))  # (b, pre, post)
            num = cm * v + h * (leak_num + (w_act * p["erev"]).sum(1) + s_num)
            den = cm + h * (gleak + w_act.sum(1) + s_den)
            v = num / (den + self.epsilon)
        return v

    def forward(self, inputs, states, elapsed_time=1.0):
        states, et = _check_cell_step(inputs, self.in_features, states, "states", self.units,
                                      elapsed_time, "elapsed_time")
        v = self.solve(self.map_inputs(inputs), states, et)
        return self.map_outputs(v), v


def _run_cell(cell, x, h, ts, step):
    """Loop ``step(cell, x_t, h, ts_t) -> (out_t, h)`` over the length axis of x (b, L, C)."""
    outs = []
    for t in range(x.shape[1]):
        out, h = step(cell, x[:, t], h, ts[:, t])
        outs.append(out)
    return outs, h


def _finish_sequence(outs, h, x, return_sequences, batch_first, unbatched):
    if return_sequences:
        y = torch.stack(outs, dim=1)
        if not batch_first and not unbatched:
            y = y.transpose(0, 1)
    else:
        y = outs[-1]
    if unbatched:
        y, h = y[0], h[0]
    return y, h


class LTC(nn.Module):
    """Liquid time-constant RNN over a sequence, with the ``ncps.torch.LTC`` interface.

    ``units`` is an int (fully connected) or a :class:`Wiring`. Forward:
    ``ltc(input, hx=None, timespans=None) -> (output, hx)`` with input (batch, length, input_size)
    (``batch_first``) or (length, batch, input_size); output per step has ``wiring.output_dim``
    features (all ``units`` for an int), the full sequence when ``return_sequences``; ``hx`` is the
    final (batch, units) state. ``timespans`` are the per-step time gaps (batch, length).
    """

    def __init__(self, input_size: int, units: Wiring | int, return_sequences: bool = True,
                 batch_first: bool = True, input_mapping: str | None = "affine",
                 output_mapping: str | None = "affine", ode_unfolds: int = 6, epsilon: float = 1e-8,
                 implicit_param_constraints: bool = True):
        super().__init__()
        self.input_size = _check_pos_int("input_size", input_size)
        self.cell = LTCCell(_as_wiring(units, "units"), self.input_size, input_mapping, output_mapping, ode_unfolds, epsilon,
                            implicit_param_constraints)
        self.wiring = self.cell.wiring
        self.units = self.cell.units
        self.output_size = self.cell.output_dim
        self.return_sequences = bool(return_sequences)
        self.batch_first = bool(batch_first)

    @staticmethod
    def _step(cell, x_t, h, ts_t):
        v = cell.solve(cell.map_inputs(x_t), h, ts_t)
        return cell.map_outputs(v), v

    def forward(self, input, hx=None, timespans=None):
        x, unbatched = _as_sequence(input, self.input_size, self.batch_first)
        b, L, _ = x.shape
        h = _check_state("hx", hx, b, self.units, unbatched, x)
        ts = _sequence_timespans(timespans, b, L, x, self.batch_first, unbatched)
        outs, h = _run_cell(self.cell, x, h, ts, self._step)
        return _finish_sequence(outs, h, x, self.return_sequences, self.batch_first, unbatched)

    def apply_weight_constraints(self):
        self.cell.apply_weight_constraints()


def _sequence_timespans(timespans, b, L, x, batch_first, unbatched):
    if isinstance(timespans, torch.Tensor) and timespans.dim() >= 2 and not unbatched and not batch_first:
        timespans = timespans.transpose(0, 1)  # (length, batch[, 1]) -> (batch, length[, 1])
    if isinstance(timespans, torch.Tensor) and unbatched and timespans.dim() == 2 and timespans.shape[-1] == 1:
        timespans = timespans[:, 0]
    return check_timespans(timespans, b, L, x.dtype, x.device)


# --------------------------------------------------------------------------------------------
# CfC
# --------------------------------------------------------------------------------------------

class LeCunTanh(nn.Module):
    def forward(self, x):
        return 1.7159 * torch.tanh(0.666 * x)


_ACTIVATIONS = {"lecun_tanh": LeCunTanh, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_CFC_MODES = ("default", "no_gate", "pure")


class _MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask (sparse wiring)."""

    def __init__(self, in_features, out_features, mask: torch.Tensor | None):
        super().__init__(in_features, out_features)
        self.register_buffer("weight_mask", mask if mask is not None else None)

    def forward(self, x):
        w = self.weight if self.weight_mask is None else self.weight * self.weight_mask
        return F.linear(x, w, self.bias)


class CfCCell(nn.Module):
    """Closed-form continuous-time cell. ``cell(x (b, in), h (b, units), ts (b,) or float)``
    returns ``(out, h_new)``; ``out`` is ``h_new`` (its motor neurons for a wiring).

    With ``b = backbone([x, h])``, ``ff1 = tanh(W1 b)``, ``ff2 = tanh(W2 b)`` and
    ``gate = sigmoid(Wa b * ts + Wb b)``:

    * ``default``: ``h' = ff1 * (1 - gate) + gate * ff2``
    * ``no_gate``: ``h' = ff1 + gate * ff2``
    * ``pure`` (direct solution): ``h' = -A exp(-ts (|w_tau| + |ff1|)) ff1 + A``

    ``units`` may be a :class:`Wiring`: the four heads then read ``[x, h]`` directly (no
    backbone; ``backbone_layers`` must be 0) through the wiring's sensory / recurrent masks, so
    neuron i only sees the inputs and neurons that synapse onto it. (ncps's wired CfC instead
    stacks one CfC layer per NCP layer; this is the single-layer masked form.)
    """

    def __init__(self, input_size: int, units: Wiring | int, mode: str = "default",
                 activation: str = "lecun_tanh", backbone_units: int = 128, backbone_layers: int = 1,
                 backbone_dropout: float = 0.0):
        super().__init__()
        if mode not in _CFC_MODES:
            raise ValueError(f"mode: expected one of {_CFC_MODES}, got {mode!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.input_size = _check_pos_int("input_size", input_size)
        self.mode = mode
        mask = None
        if isinstance(units, Wiring):
            if backbone_layers != 0:
                raise ValueError("backbone_layers: a wired CfC reads [x, h] through the wiring masks; "
                                 f"pass backbone_layers=0, got {backbone_layers}")
            self.wiring = units.build(self.input_size)
            mask = torch.cat([self.wiring.sensory_mask(), self.wiring.mask()], dim=0).t().contiguous()
        else:
            self.wiring = None
        self.units = units.units if isinstance(units, Wiring) else _check_pos_int("units", units)
        self.output_dim = self.wiring.output_dim if self.wiring is not None else self.units
        backbone_layers = _check_pos_int("backbone_layers", backbone_layers, 0)
        if not 0.0 <= backbone_dropout < 1.0:
            raise ValueError(f"backbone_dropout: expected a float in [0, 1), got {backbone_dropout!r}")
        layers, width = [], self.input_size + self.units
        for _ in range(backbone_layers):
            layers += [nn.Linear(width, _check_pos_int("backbone_units", backbone_units)),
                       _ACTIVATIONS[activation]()]
            if backbone_dropout > 0:
                layers.append(nn.Dropout(backbone_dropout))
            width = backbone_units
        self.backbone = nn.Sequential(*layers)
        self.ff1 = _MaskedLinear(width, self.units, mask)
        if mode == "pure":
            self.w_tau = nn.Parameter(torch.zeros(self.units))
            self.A = nn.Parameter(torch.ones(self.units))
        else:
            self.ff2 = _MaskedLinear(width, self.units, mask)
            self.time_a = _MaskedLinear(width, self.units, mask)
            self.time_b = _MaskedLinear(width, self.units, mask)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs, hx, ts=1.0):
        hx, ts = _check_cell_step(inputs, self.input_size, hx, "hx", self.units, ts, "ts")
        h = self.step(inputs, hx, ts)
        return self.output(h), h

    def output(self, h):
        return h if self.wiring is None else h[:, : self.output_dim]

    def step(self, x, h, ts):
        """Unchecked update: x (b, in), h (b, units), ts (b,) -> new h."""
        bb = self.backbone(torch.cat([x, h], dim=-1))
        ff1 = torch.tanh(self.ff1(bb))
        ts = ts.unsqueeze(-1)
        if self.mode == "pure":
            return -self.A * torch.exp(-ts * (self.w_tau.abs() + ff1.abs())) * ff1 + self.A
        ff2 = torch.tanh(self.ff2(bb))
        gate = torch.sigmoid(self.time_a(bb) * ts + self.time_b(bb))
        if self.mode == "no_gate":
            return ff1 + gate * ff2
        return ff1 * (1.0 - gate) + gate * ff2


class CfC(nn.Module):
    """CfC RNN over a sequence with the ``ncps.torch.CfC`` interface:
    ``cfc(input, hx=None, timespans=None) -> (output, hx)``; ``proj_size`` adds a linear map of
    each output step. See :class:`CfCCell` for the modes and :class:`LTC` for the shapes."""

    def __init__(self, input_size: int, units: Wiring | int, proj_size: int | None = None,
                 return_sequences: bool = True, batch_first: bool = True, mode: str = "default",
                 activation: str = "lecun_tanh", backbone_units: int | None = None,
                 backbone_layers: int | None = None, backbone_dropout: float = 0.0):
        super().__init__()
        wired = isinstance(units, Wiring)
        if wired and (backbone_units is not None or (backbone_layers or 0) != 0):
            raise ValueError("backbone_units / backbone_layers: not allowed with a Wiring (the wiring sets "
                             "the connectivity); leave them unset")
        self.input_size = _check_pos_int("input_size", input_size)
        self.cell = CfCCell(self.input_size, units, mode, activation,
                            128 if backbone_units is None else backbone_units,
                            0 if wired else (1 if backbone_layers is None else backbone_layers),
                            backbone_dropout)
        self.units = self.cell.units
        self.wiring = self.cell.wiring
        self.proj = None
        if proj_size is not None:
            self.proj = nn.Linear(self.cell.output_dim, _check_pos_int("proj_size", proj_size))
        self.output_size = proj_size if proj_size is not None else self.cell.output_dim
        self.return_sequences = bool(return_sequences)
        self.batch_first = bool(batch_first)

    def _step(self, cell, x_t, h, ts_t):
        h = cell.step(x_t, h, ts_t)
        out = cell.output(h)
        return (self.proj(out) if self.proj is not None else out), h

    def forward(self, input, hx=None, timespans=None):
        x, unbatched = _as_sequence(input, self.input_size, self.batch_first)
        b, L, _ = x.shape
        h = _check_state("hx", hx, b, self.units, unbatched, x)
        ts = _sequence_timespans(timespans, b, L, x, self.batch_first, unbatched)
        outs, h = _run_cell(self.cell, x, h, ts, self._step)
        return _finish_sequence(outs, h, x, self.return_sequences, self.batch_first, unbatched)


@dataclass
class CfCState:
    """Recurrent cache of one :class:`CfCMixer`: the RNN hidden state (constant size)."""
    h: torch.Tensor   # (batch, units)

    def nbytes(self) -> int:
        return self.h.numel() * self.h.element_size()


def _check_state_obj(name: str, state, cls, shapes: dict, batch: int):
    """A recurrent-mixer state: of type ``cls`` with tensors of the given shapes (None allowed
    where the shape is None)."""
    if not isinstance(state, cls):
        raise TypeError(f"{name}: expected a {cls.__name__} (from allocate_state), got {type(state).__name__}")
    for field, shape in shapes.items():
        t = getattr(state, field)
        if shape is None:
            if t is not None:
                raise ValueError(f"{name}.{field}: expected None for this layer, got {describe(t)}")
            continue
        check_tensor(f"{name}.{field}", t)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}.{field}: expected shape {shape} (state allocated for batch {batch}?), "
                             f"got {describe(t)}")


@register_mixer("cfc")
class CfCMixer(nn.Module):
    """A CfC RNN as a sequence mixer: (batch, length, dim) -> (batch, length, dim).
    Sequential over the length (no parallel scan): for short sequences or as a baseline.

    Recurrent-mixer protocol (cached generation): ``allocate_state(batch)`` -> :class:`CfCState`;
    ``forward(x, state=state)`` starts from ``state.h`` and writes the final hidden state back;
    ``step(x_t, state)`` does one token."""

    def __init__(self, dim: int, units: int | None = None, mode: str = "default",
                 activation: str = "lecun_tanh", backbone_units: int | None = None,
                 backbone_layers: int = 1, backbone_dropout: float = 0.0):
        super().__init__()
        self.dim = _check_pos_int("dim", dim)
        self.rnn = CfC(dim, units if units is not None else dim, proj_size=dim, mode=mode, activation=activation,
                       backbone_units=backbone_units if backbone_units is not None else dim,
                       backbone_layers=backbone_layers, backbone_dropout=backbone_dropout)

    def allocate_state(self, batch: int, device=None, dtype=None) -> CfCState:
        """Zero hidden state for ``batch`` sequences (the RNN's own initial state)."""
        w = self.rnn.cell.ff1.weight
        return CfCState(torch.zeros(_check_pos_int("batch", batch), self.rnn.units,
                                    device=device or w.device, dtype=dtype or w.dtype))

    def forward(self, x, timespans=None, state: CfCState | None = None):
        """x (batch, length, dim). With ``state`` the sequence continues from ``state.h`` and the
        state is advanced in place."""
        if state is None:
            return self.rnn(x, timespans=timespans)[0]
        check_tensor("x", x)
        if x.dim() != 3:
            raise ValueError(f"x: expected (batch, length, {self.dim}) with a state, got {describe(x)}")
        _check_state_obj("state", state, CfCState, {"h": (x.shape[0], self.rnn.units)}, x.shape[0])
        y, h = self.rnn(x, hx=state.h, timespans=timespans)
        state.h.copy_(h)
        return y

    def step(self, x: torch.Tensor, state: CfCState, timespans=None) -> torch.Tensor:
        """One token: x (batch, dim) -> (batch, dim); advances ``state`` in place. ``timespans``:
        the step's time gap, a number or (batch,)."""
        check_tensor("x", x)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected (batch, {self.dim}), got {describe(x)}")
        ts = _step_times(timespans, x.shape[0], x, "timespans")
        return self.forward(x.unsqueeze(1), timespans=ts.unsqueeze(1), state=state)[:, 0]


# --------------------------------------------------------------------------------------------
# the liquid scan: input-only conductances -> selective scan
# --------------------------------------------------------------------------------------------

def _one_minus_exp_over(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = (1 - exp(-x)) / x, with phi(0) = 1, stable (and differentiable) near 0."""
    small = x.abs() < 1e-6
    xs = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - 0.5 * x, -torch.expm1(-xs) / xs)


def _expand_bc(name, t, b, L, d, N):
    check_tensor(name, t)
    if t.dim() == 3:
        t = t.unsqueeze(2)
    if t.dim() != 4 or t.shape[0] != b or t.shape[1] != L or t.shape[3] != N or d % t.shape[2] != 0:
        raise ValueError(f"{name}: expected (batch, length, N)=({b}, {L}, {N}) or (batch, length, groups, N) "
                         f"with groups dividing {d}, got {describe(t)}")
    return t


def _scan_inputs(e, f, leak, B, ts, a=None):
    """The selective-scan arguments (u, delta, A, B_in) of the liquid recurrence. Works for a
    sequence (e, f (b, L, d), B (b, L, G, N), ts (b, L)) and for one decode step (e, f (b, d),
    B (b, G, N), ts (b,)): the channel axis is -1 of e and -2 of B."""
    d, N = e.shape[-1], B.shape[-1]
    lam = leak + f                                     # total conductance 1/tau + f  (..., d)
    delta = lam * ts.unsqueeze(-1)                     # per-token step size: time gap * rate
    target = f * e / lam                               # equilibrium f*E/lambda of the frozen ODE
    if a is None:
        # one decay per channel (A = -1): the exact input factor (1 - e^-delta)/delta is per
        # token and channel, so it folds into u and B stays shared by the channels
        return target * _one_minus_exp_over(delta), delta, -torch.ones(d, N, dtype=e.dtype, device=e.device), B
    # N time scales per channel: the factor depends on n, so B becomes per channel
    Bc = B.repeat_interleave(d // B.shape[-2], dim=-2) if B.shape[-2] != d else B
    return target, delta, -a, Bc * a * _one_minus_exp_over(a * delta.unsqueeze(-1))


def _liquid_scan(e, f, leak, B, C, ts, a=None, D=None, z=None, initial_state=None, return_last_state=False):
    """Unchecked core of :func:`liquid_scan`; B, C are (b, L, G, N), ts (b, L)."""
    u, delta, A, B_in = _scan_inputs(e, f, leak, B, ts, a)
    y, last = selective_scan(u, delta, A, B_in, C, initial_state=initial_state, return_last_state=True)
    if D is not None:  # the skip reads the value e, not the scan input u
        y = y + D * e
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return (y, last) if return_last_state else y


def liquid_scan(e, f, leak, B, C, a=None, timespans=None, D=None, z=None, initial_state=None,
                return_last_state: bool = False):
    """Input-conductance liquid layer, solved exactly between samples with one selective scan.

    For batch b, channel d, state n, over the gap ``dt_t = timespans[t]`` with inputs held::

        dh[d,n]/dt = a[d,n] * ( -(leak[d] + f[t,d]) * h[d,n]  +  f[t,d] * e[t,d] * B[t,n] )
        y[t,d]     = sum_n C[t,n] h[t,d,n] + D[d] e[t,d]        (then * silu(z[t,d]) if z given)

    i.e. LTC's ``dx/dt = -[1/tau + f] x + f A`` with ``1/tau = leak``, conductance ``f`` and a
    reversal potential ``A = e * B`` that may depend on the input; ``a`` (default 1) spreads a
    channel's states over several time scales. With ``lam = leak + f`` the exact step is::

        h[t] = exp(-a lam dt) h[t-1] + (1 - exp(-a lam dt)) * B * f e / lam

    -- the :func:`vscan.ops.selective_scan` recurrence with per-token step size
    ``delta = lam * dt`` (the time gap times a learned, input-dependent rate) and ``A = -a``:

    * ``a`` None (all ones): ``u = phi(delta) f e / lam``, B as given; ``phi(x) = (1 - e^-x) / x``.
    * ``a`` given: ``u = f e / lam`` and ``B_eff = a B phi(a delta)``, which differs per channel,
      so the scan reads a (batch, length, channels, N) B: more memory traffic.

    Unlike Mamba's Euler input term ``delta * B * u``, the exact factor keeps ``h`` a convex
    combination of its past and the equilibrium, so the state stays bounded for any gap.

    Args:
        e: (batch, length, channels) reversal potential / value carried by each channel.
        f: (batch, length, channels) input conductance, >= 0.
        leak: (channels,) leak conductance 1/tau, > 0.
        B, C: (batch, length, N) or (batch, length, groups, N).
        a: (channels, N) time-scale multipliers > 0, or None (all 1).
        timespans: per-step time gaps, (batch, length), >= 0; None = 1.
        D, z, initial_state (batch, channels, N), return_last_state: as in selective_scan.
    """
    for nm, t in (("e", e), ("f", f)):
        check_tensor(nm, t)
        if t.dim() != 3:
            raise ValueError(f"{nm}: expected a 3-D (batch, length, channels) tensor, got {describe(t)}")
    if f.shape != e.shape:
        raise ValueError(f"f: expected the shape of e {tuple(e.shape)}, got {describe(f)}")
    b, L, d = e.shape
    check_tensor("leak", leak)
    if leak.shape != (d,):
        raise ValueError(f"leak: expected shape ({d},), got {describe(leak)}")
    check_tensor("B", B)
    N = B.shape[-1]
    B = _expand_bc("B", B, b, L, d, N)
    C = _expand_bc("C", C, b, L, d, N)
    if a is not None:
        check_tensor("a", a)
        if tuple(a.shape) != (d, N):
            raise ValueError(f"a: expected shape (channels, N)=({d}, {N}), got {describe(a)}")
    if e.device.type != "meta":
        if bool((f < 0).any()):
            raise ValueError("f: conductances must be >= 0 (e.g. pass softplus(...))")
        if not bool((leak > 0).all()):
            raise ValueError("leak: leak conductances 1/tau must be > 0")
        if a is not None and not bool((a > 0).all()):
            raise ValueError("a: time-scale multipliers must be > 0")
    ts = check_timespans(timespans, b, L, e.dtype, e.device)
    return _liquid_scan(e, f, leak, B, C, ts, a, D, z, initial_state, return_last_state)


@dataclass
class LiquidScanState:
    """Recurrent cache of one :class:`LiquidScan` layer; its size does not depend on the length."""
    conv: torch.Tensor | None   # (batch, d_inner, d_conv - 1) last conv inputs; None when d_conv=0
    ssm: torch.Tensor           # (batch, d_inner, d_state) scan state, float32 (float64 for float64)

    def nbytes(self) -> int:
        n = self.ssm.numel() * self.ssm.element_size()
        return n + (self.conv.numel() * self.conv.element_size() if self.conv is not None else 0)


@register_mixer("liquid")
class LiquidScan(nn.Module):
    """Liquid-scan mixer: (batch, length, dim) -> (batch, length, dim), parallel over the length.

    Block layout as Mamba's (in-projection to value ``x`` and gate ``z``, optional causal
    depthwise conv, gated output projection); the recurrence is :func:`liquid_scan` with

    * conductance ``f = softplus(rate_proj(x_proj(x)) + rate_bias)``, input-dependent;
    * leak ``1/tau = exp(leak_log)`` per channel, so the step size is
      ``delta = (1/tau + f) * time_gap`` -- the time gap times a learned, input-dependent rate;
    * reversal potential ``e = erev * x`` (LTC's A, scaled by the token's value);
    * selective B, C from ``x``; one decay rate per channel (all states of a channel share it,
      as in Mamba-2), or with ``multiscale=True`` learned multipliers ``a = exp(A_log)``
      (init 1..N) giving each state its own time scale, at the cost of a per-channel B.

    ``forward(x, timespans=None, state=None)``: ``timespans`` (batch, length) are the time gaps
    of an irregularly sampled sequence (default 1 per token); a gap of 0 carries the state over.

    Recurrent-mixer protocol (cached generation): ``allocate_state(batch)`` ->
    :class:`LiquidScanState` (conv history + scan state, zeros = the stateless forward's start);
    ``forward(x, state=state)`` continues from it through selective_scan's ``initial_state`` and
    writes the new state back; ``step(x_t, state)`` does one token through
    :func:`vscan.ops.selective_state_update` (the same recurrence: A = -1 or -a, step size delta,
    the exact input factor folded into u or B), with the D-skip on ``e`` and the gate applied after.
    """

    def __init__(self, dim: int, d_state: int = 16, expand: float = 1.0, d_conv: int = 4,
                 conv_bias: bool = True, bias: bool = False, rate_rank: int | str = "auto",
                 rate_min: float = 1e-3, rate_max: float = 1e-1, leak_init: float = 1e-3,
                 multiscale: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim = _check_pos_int("dim", dim)
        self.d_state = _check_pos_int("d_state", d_state)
        if expand <= 0:
            raise ValueError(f"expand: expected > 0, got {expand!r}")
        self.d_inner = max(int(expand * dim), 1)
        self.d_conv = _check_pos_int("d_conv", d_conv, 0)
        if self.d_conv not in (0, 2, 3, 4):
            raise ValueError(f"d_conv: expected 0 (no conv) or a width in 2..4, got {d_conv}")
        self.rate_rank = math.ceil(dim / 16) if rate_rank == "auto" else _check_pos_int("rate_rank", rate_rank)
        if not 0 < rate_min <= rate_max:
            raise ValueError(f"rate_min, rate_max: expected 0 < rate_min <= rate_max, got {rate_min}, {rate_max}")
        if leak_init <= 0:
            raise ValueError(f"leak_init: expected > 0, got {leak_init!r}")
        self._init = (rate_min, rate_max, leak_init)
        di, N = self.d_inner, self.d_state
        self.in_proj = nn.Linear(dim, 2 * di, bias=bias, **dd)
        if self.d_conv:
            self.conv_weight = nn.Parameter(torch.empty(di, self.d_conv, **dd))
            self.conv_bias = nn.Parameter(torch.zeros(di, **dd)) if conv_bias else None
        self.x_proj = nn.Linear(di, self.rate_rank + 2 * N, bias=False, **dd)
        self.rate_proj = nn.Linear(self.rate_rank, di, bias=True, **dd)
        self.leak_log = nn.Parameter(torch.empty(di, device=device, dtype=torch.float32))
        self.multiscale = bool(multiscale)
        self.A_log = (nn.Parameter(torch.empty(di, N, device=device, dtype=torch.float32))
                      if self.multiscale else None)
        self.erev = nn.Parameter(torch.ones(di, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.ones(di, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(di, dim, bias=bias, **dd)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        rate_min, rate_max, leak_init = self._init
        if self.d_conv:
            init_conv_(self.conv_weight, self.conv_bias)
        init_dt_proj_(self.rate_proj.weight, self.rate_proj.bias, self.rate_rank, rate_min, rate_max)
        self.leak_log.fill_(math.log(leak_init))
        if self.A_log is not None:
            self.A_log.copy_(s4d_real_A_log(self.d_state, self.d_inner, device=self.A_log.device))
        self.erev.fill_(1.0)
        self.D.fill_(1.0)

    def _coeffs(self, xs: torch.Tensor, cdt):
        """Conv output xs (..., d_inner) -> e, f (..., d_inner), leak, a, B, C (..., N) in cdt."""
        r, B, C = self.x_proj(xs).split([self.rate_rank, self.d_state, self.d_state], dim=-1)
        f = F.softplus(self.rate_proj(r).to(cdt))
        leak = torch.exp(self.leak_log.to(cdt))
        a = torch.exp(self.A_log.to(cdt)) if self.A_log is not None else None
        e = xs.to(cdt) * self.erev.to(cdt)
        return e, f, leak, a, B.to(cdt), C.to(cdt)

    @staticmethod
    def _compute_dtype(x: torch.Tensor):
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def allocate_state(self, batch: int, device=None, dtype=None) -> LiquidScanState:
        """Zero state for ``batch`` sequences: the conv history in ``dtype`` (default: the
        weights'), the scan state in float32 (float64 when ``dtype`` is float64)."""
        batch = _check_pos_int("batch", batch)
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        conv = (torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
                if self.d_conv else None)
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        return LiquidScanState(conv, torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=sdt))

    def _check_state(self, state, batch: int):
        shapes = {"conv": (batch, self.d_inner, self.d_conv - 1) if self.d_conv else None,
                  "ssm": (batch, self.d_inner, self.d_state)}
        _check_state_obj("state", state, LiquidScanState, shapes, batch)

    def forward(self, x: torch.Tensor, timespans=None, state: LiquidScanState | None = None) -> torch.Tensor:
        """x (batch, length, dim). With ``state`` (from :meth:`allocate_state`) the sequence
        continues from it and the state is advanced in place."""
        check_tensor("x", x)
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x: expected (batch, length, {self.dim}), got {describe(x)}")
        b, L, _ = x.shape
        if state is not None:
            self._check_state(state, b)
        cdt = self._compute_dtype(x)
        ts = check_timespans(timespans, b, L, cdt, x.device)
        xs_in, z = self.in_proj(x).chunk(2, dim=-1)
        if self.d_conv:
            xs = causal_conv1d(xs_in, self.conv_weight, self.conv_bias, "silu",
                               initial_state=state.conv if state is not None else None)
        else:
            xs = F.silu(xs_in)
        e, f, leak, a, B, C = self._coeffs(xs, cdt)
        y, last = _liquid_scan(e, f, leak, B.unsqueeze(2), C.unsqueeze(2), ts, a=a, D=self.D.to(cdt), z=z,
                               initial_state=state.ssm if state is not None else None, return_last_state=True)
        if state is not None:
            if self.d_conv:
                hist = torch.cat([state.conv, xs_in.transpose(1, 2).to(state.conv.dtype)], dim=2)
                state.conv.copy_(hist[..., hist.shape[2] - (self.d_conv - 1):])
            state.ssm.copy_(last)
        return self.out_proj(y.to(x.dtype))

    def step(self, x: torch.Tensor, state: LiquidScanState, timespans=None) -> torch.Tensor:
        """One token: x (batch, dim) -> (batch, dim); advances ``state`` in place. ``timespans``:
        the step's time gap, a number or (batch,) (default 1)."""
        check_tensor("x", x)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected (batch, {self.dim}), got {describe(x)}")
        b = x.shape[0]
        self._check_state(state, b)
        cdt = self._compute_dtype(x)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        if self.d_conv:
            xs = causal_conv1d_update(xs, state.conv, self.conv_weight, self.conv_bias, "silu")
        else:
            xs = F.silu(xs)
        e, f, leak, a, B, C = self._coeffs(xs, cdt)
        ts = _step_times(timespans, b, e, "timespans")
        u, delta, A, B_in = _scan_inputs(e, f, leak, B.unsqueeze(1), ts, a)
        y = selective_state_update(state.ssm, u, delta, A, B_in, C.unsqueeze(1))
        y = (y + self.D.to(cdt) * e) * F.silu(z.to(cdt))
        return self.out_proj(y.to(x.dtype))
