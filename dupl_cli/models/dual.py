"""Two independent students sharing only their initial backbone weights (docs/method.md §3)."""

from __future__ import annotations

import copy

from torch import nn

from dupl_cli.models.student import Student


class DualStudent(nn.Module):
    def __init__(self, students: list[Student] | tuple[Student, Student]) -> None:
        super().__init__()
        if len(students) != 2:
            raise ValueError(f"DualStudent needs two students, got {len(students)}")
        self.students = nn.ModuleList(students)
        self.num_classes = students[0].num_classes

    def param_groups(self):
        """(backbone parameters of both students, head parameters of both students)."""
        backbone, heads = [], []
        for student in self.students:
            b, h = student.param_groups()
            backbone += b
            heads += h
        return backbone, heads


def build_dual_student(model_settings, num_classes: int, img_size: int) -> DualStudent:
    """Build one backbone, deep-copy it for the second student; heads are initialised independently."""
    from dupl_cli.models.backbones import build_backbone

    backbone = build_backbone(model_settings, img_size)
    twin = copy.deepcopy(backbone)
    kwargs = dict(head_channels=model_settings.head_channels, head_dilation=model_settings.head_dilation)
    return DualStudent([Student(backbone, num_classes, **kwargs), Student(twin, num_classes, **kwargs)])
