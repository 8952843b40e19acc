"""Whole-step gradient parity in the presence of ReLU units that sit on their kink.

A head pre-activation within fp32 rounding of zero lands on either side of the kink in two correct
fp32 computations: which side depends on the convolution algorithm (oneDNN or PyTorch's own
kernel, chosen by CPU model, memory layout and thread count). The sides differ in the gradient by
that unit's whole backward contribution, far above rounding: in the release fixture set b21990f
one conv6 unit of student 1 is 9e-8 from zero, and the release's side moves
``patch_embed.proj.bias``'s gradient by 1.7e-4 (6e-4 of its largest entry).

``HeadKinks`` records every head call of a step. The candidates are units within ``BAND`` times
our own fp32 error of zero (measured against a float64 forward of the same call). ``explain``
puts on the other side those candidates whose flip explains the difference to a reference
(closest to the kink first, each flip's sign fixed by which side we are on, each taken only if
the residual holds its whole contribution) and returns the gradients so corrected, for the
caller to compare every gradient tightly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BAND = 16.0  # a reference's rounding up to 15x ours (ours: <= 8e-7 of max|z| measured)
LAYERS = ("conv6", "conv7")


@dataclass(frozen=True)
class Unit:
    student: int  # 0-based
    call: int  # head call of the step (weak forward, strong view, ...)
    layer: int  # 0 = conv6, 1 = conv7
    index: tuple[int, ...]
    z: float  # our pre-activation

    def __str__(self) -> str:
        return (
            f"student {self.student + 1} head call {self.call} {LAYERS[self.layer]} unit {self.index} "
            f"(z = {self.z:.1e})"
        )


class HeadKinks:
    """Records the students' head calls (pre-activations, ReLU outputs, backbone input) during a step."""

    def __init__(self, students) -> None:
        self.students = list(students)
        self.calls: list[list[dict]] = [[] for _ in self.students]
        self._inputs: list[torch.Tensor | None] = [None] * len(self.students)
        self._handles: list = []
        self._grad_of_r: dict[int, torch.Tensor | None] = {}

    def __enter__(self) -> HeadKinks:
        for k, student in enumerate(self.students):
            student.head.relu.inplace = False  # same values; keeps the pre-activations in the graph
            self._handles += [
                student.backbone.register_forward_pre_hook(self._remember_input(k)),
                student.head.register_forward_pre_hook(self._open_call(k)),
                student.head.conv6.register_forward_hook(self._store(k, "z")),
                student.head.conv7.register_forward_hook(self._store(k, "z")),
                student.head.relu.register_forward_hook(self._store(k, "r")),
            ]
        return self

    def __exit__(self, *exc) -> None:
        self._stop_recording()
        for student in self.students:
            student.head.relu.inplace = True

    def _stop_recording(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _remember_input(self, k):
        def hook(module, args):
            self._inputs[k] = args[0].detach()

        return hook

    def _open_call(self, k):
        def hook(module, args):
            self.calls[k].append({"x": self._inputs[k], "z": [], "r": []})

        return hook

    def _store(self, k, kind):
        def hook(module, args, out):
            self.calls[k][-1][kind].append(out)

        return hook

    def gradients(self, loss: torch.Tensor) -> list[dict[str, torch.Tensor | None]]:
        """Per student, parameter name -> gradient of ``loss`` (None where it has none)."""
        self._stop_recording()  # float64 twins and extra backward passes must not record
        named = [dict(s.named_parameters()) for s in self.students]
        params = [p for n in named for p in n.values() if p.requires_grad]
        relu_outs = [r for calls in self.calls for call in calls for r in call["r"]]
        got = torch.autograd.grad(loss, params + relu_outs, retain_graph=True, allow_unused=True)
        by_param = dict(zip(map(id, params), got[: len(params)], strict=True))
        self._grad_of_r = dict(zip(map(id, relu_outs), got[len(params) :], strict=True))
        return [{name: by_param.get(id(p)) for name, p in n.items()} for n in named]

    def _float64_preactivations(self, k: int, x: torch.Tensor) -> list[torch.Tensor]:
        twin = copy.deepcopy(self.students[k]).double()
        with torch.no_grad():
            z6 = twin.head.conv6(twin.backbone(x.double()).final)
            return [z6, twin.head.conv7(F.relu(z6))]

    def candidates(self) -> list[Unit]:
        """Units within BAND x our measured fp32 error of their kink whose output gets a gradient,
        closest to the kink (in units of that error) first."""
        units = []
        for k, calls in enumerate(self.calls):
            for c, call in enumerate(calls):
                for layer, (z, z64, r) in enumerate(
                    zip(call["z"], self._float64_preactivations(k, call["x"]), call["r"], strict=True)
                ):
                    if self._grad_of_r.get(id(r)) is None:
                        continue
                    err = float((z.detach().double() - z64).abs().max())
                    values = z.detach()
                    for index in torch.nonzero(values.abs() <= BAND * err).tolist():
                        value = float(values[tuple(index)])
                        units.append((abs(value) / err, Unit(k, c, layer, tuple(index), value)))
        return [unit for _, unit in sorted(units, key=lambda pair: pair[0])]

    def flip_delta(self, unit: Unit) -> dict[str, torch.Tensor]:
        """What flipping ``unit`` to the other side of its kink adds to its student's gradients."""
        call = self.calls[unit.student][unit.call]
        z, r = call["z"][unit.layer], call["r"][unit.layer]
        seed = self._grad_of_r[id(r)][unit.index]
        sign = -1.0 if unit.z > 0 else 1.0  # on: the flip removes the unit's path; off: adds it
        named = [(n, p) for n, p in self.students[unit.student].named_parameters() if p.requires_grad]
        parts = torch.autograd.grad(
            z[unit.index], [p for _, p in named], retain_graph=True, allow_unused=True
        )
        return {n: sign * seed * part for (n, _), part in zip(named, parts, strict=True) if part is not None}

    def explain(self, grads, ref_tensors: dict, ref_norms: dict, tensor_tol: dict, norm_tol: dict):
        """Flip the candidates that explain the difference to a reference, greedily.

        ``ref_tensors``: (student index, name) -> reference gradient; ``ref_norms``: (student index,
        name) -> reference L2 norm; ``tensor_tol`` / ``norm_tol``: the same keys -> the tolerance
        the caller will check, which residuals are measured in.
        Returns (corrected gradients, flipped units).
        """

        def column(delta_of: dict, k: int) -> torch.Tensor:
            parts = []
            for key in ref_tensors:
                d = delta_of.get(key[1]) if key[0] == k else None
                parts.append(
                    (d if d is not None else torch.zeros_like(ref_tensors[key])).flatten() / tensor_tol[key]
                )
            for key in ref_norms:  # a small change moves a norm by <g/|g|, delta>
                g, d = grads[key[0]][key[1]], delta_of.get(key[1]) if key[0] == k else None
                value = 0.0 if d is None or g is None else float((g * d).sum() / g.norm().clamp_min(1e-30))
                parts.append(torch.tensor([value / norm_tol[key]]))
            return torch.cat([p.double() for p in parts])

        pieces = []
        for key, ref in ref_tensors.items():
            pieces.append((ref - grads[key[0]][key[1]]).flatten().double() / tensor_tol[key])
        for key, n_ref in ref_norms.items():
            gap = (n_ref - float(grads[key[0]][key[1]].norm())) / norm_tol[key]
            pieces.append(torch.tensor([gap], dtype=torch.double))
        residual = torch.cat(pieces)
        chosen: list[Unit] = []
        # Closest to the kink first: those are the ones a reference's rounding flips. Stop once
        # every residual is within its tolerance; a unit is taken only if it explains itself.
        for unit in self.candidates():
            if float(residual.abs().max()) <= 1.0:
                break
            col = column(self.flip_delta(unit), unit.student)
            size = float(col @ col)
            if size > 0 and 0.75 <= float(residual @ col) / size <= 1.25:
                chosen.append(unit)
                residual = residual - col
        corrected = [dict(g) for g in grads]
        for unit in chosen:
            for name, delta in self.flip_delta(unit).items():
                corrected[unit.student][name] = corrected[unit.student][name] + delta
        return corrected, chosen
