"""Two independent students sharing only their initial backbone weights (docs/method.md §3).

The same container holds a single student for one-network checkpoints (ToCo, the paper's
baseline): ``len(model.students)`` is the student count everywhere downstream.
"""

from __future__ import annotations

import copy

from torch import nn

from dupl_cli.models.backbones import build_backbone
from dupl_cli.models.student import Student

MAX_STUDENTS = 2


class DualStudent(nn.Module):
    def __init__(self, students: list[Student] | tuple[Student, ...]) -> None:
        super().__init__()
        if not 1 <= len(students) <= MAX_STUDENTS:
            raise ValueError(f"DualStudent holds one or two students, got {len(students)}")
        self.students = nn.ModuleList(students)
        self.num_classes = students[0].num_classes

    def param_groups(self):
        """(backbone parameters of every student, head parameters of every student)."""
        backbone, heads = [], []
        for student in self.students:
            b, h = student.param_groups()
            backbone += b
            heads += h
        return backbone, heads


def build_dual_student(model_settings, num_classes: int, img_size: int, students: int = 2) -> DualStudent:
    """Build one backbone, deep-copy it for the second student; heads are initialised independently."""
    if not 1 <= students <= MAX_STUDENTS:
        raise ValueError(f"students must be 1 or 2, got {students}")
    backbone = build_backbone(model_settings, img_size)
    kwargs = dict(head_channels=model_settings.head_channels, head_dilation=model_settings.head_dilation)
    members = [Student(backbone, num_classes, **kwargs)]
    if students == 2:
        members.append(Student(copy.deepcopy(backbone), num_classes, **kwargs))
    return DualStudent(members)
