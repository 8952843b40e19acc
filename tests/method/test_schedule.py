"""Phase weights, phase names and the DTA window."""

from dupl_cli.method import schedule
from dupl_cli.method.params import LossWeights, PhaseSchedule

W = LossWeights()


def test_phase_weights_voc():
    s = PhaseSchedule()
    a = schedule.phase_at(0, s, W)
    assert (a.w_cls, a.w_ptc, a.w_dis, a.w_seg, a.w_reg) == (1.0, 0.2, 0.1, 0.0, 0.0)
    assert not a.seg_labels and not a.anf and a.name == "A"
    b = schedule.phase_at(2000, s, W)
    assert b.w_seg == 0.2 and b.w_reg == 0.0 and b.seg_labels and not b.anf and b.name == "B"
    assert schedule.phase_at(7999, s, W).name == "B"
    cc = schedule.phase_at(8000, s, W)
    assert cc.w_reg == 0.05 and cc.anf and cc.name == "C"


def test_delayed_weights_switch_on_one_iteration_late():
    s = PhaseSchedule(delayed_weights=True)
    assert schedule.phase_at(2000, s, W).w_seg == 0.0
    assert schedule.phase_at(2001, s, W).w_seg == 0.2
    at_anf = schedule.phase_at(8000, s, W)
    assert at_anf.w_reg == 0.0 and at_anf.anf  # ANF still feeds the weighted seg loss
    assert schedule.phase_at(8001, s, W).w_reg == 0.05


def test_the_release_s_weight_zero_seg_iterations_are_marked_only_with_delayed_weights():
    delayed = PhaseSchedule(delayed_weights=True)
    marked = [t for t in range(1990, 2010) if schedule.phase_at(t, delayed, W).seg_zero_grad]
    assert marked == [2000]  # computed from t_seg, weighted from t_seg + 1
    coco_like = PhaseSchedule(t_seg=8000, seg_start=8003, delayed_weights=True)
    assert [t for t in range(7990, 8010) if schedule.phase_at(t, coco_like, W).seg_zero_grad] == [
        8000,
        8001,
        8002,
    ]
    fixed = PhaseSchedule(t_seg=8000, seg_start=8003)
    assert not any(schedule.phase_at(t, fixed, W).seg_zero_grad for t in range(7990, 8010))


def test_zero_weight_terms_switch_work_off():
    p = schedule.phase_at(10000, PhaseSchedule(), LossWeights(seg=0.0, reg=0.0))
    assert not p.seg_labels and not p.anf


def test_phase_names_come_from_the_schedule_alone():
    # Zero weights or a delayed switch-on change the work, not the stage's name.
    s = PhaseSchedule(t_seg=10, t_anf=20)
    for weights, delayed in ((W, False), (LossWeights(seg=0.0, reg=0.0), False), (W, True)):
        sched = PhaseSchedule(t_seg=10, t_anf=20, delayed_weights=delayed)
        names = [schedule.phase_at(t, sched, weights).name for t in (0, 9, 10, 19, 20, 99)]
        assert names == ["A", "A", "B", "B", "C", "C"]
        assert names == [schedule.phase_name(t, s) for t in (0, 9, 10, 19, 20, 99)]


def test_coco_aux_stage_and_dta_window():
    s = PhaseSchedule(t_seg=8000, t_anf=32000, aux_seg_until=12000, max_iters=80000)
    assert schedule.phase_at(9000, s, W).aux_labels
    assert not schedule.phase_at(12000, s, W).aux_labels
    assert schedule.dta_window(s) == (12000, 80000)
    assert schedule.dta_window(PhaseSchedule()) == (2000, 20000)
