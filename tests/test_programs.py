"""Program choice, one copy for the handler and LocalModel: the decision from injected timings, the choice per host
from injected CPU flags and torch versions, and the eager rebuild from the card's layer list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aiaas_torch.handlers import integrity
from aiaas_torch.handlers import programs as p

AVX2 = {"avx", "avx2", "fma", "sse4_2"}
AVX512 = AVX2 | {"avx512f", "avx512dq", "avx512vl", "avx512bw"}
VNNI = AVX512 | {"avx512_vnni"}
ORDER = ["float-eager", "float-program", "float-compiled", "int8-compiled"]
MS = 1e-3


@pytest.mark.parametrize(
    "flags, cls",
    [(AVX2, "avx2"), (AVX512, "avx512"), (VNNI, "avx512_vnni"), (VNNI | {"amx_int8", "amx_tile"}, "amx"),
     ({"avx2"}, "none"), ({"asimd", "fp"}, "asimd"), (set(), "none")],
)  # fmt: skip
def test_isa_class(flags, cls):
    assert integrity.isa_class(flags) == cls


@pytest.mark.parametrize("isa, classes", [("avx512", {"avx512", "avx512_vnni"}), ("avx2", {"avx2"})])
def test_the_isa_class_and_the_compiled_isa_check_agree_on_the_same_flags(isa, classes):
    # One table (integrity.ISA_CPU_FLAGS): a plan's ISA class (programs.choose) and the check that compiled code of that
    # ISA can run here (integrity.host_supports) give the same verdict for every combination of the flags either needs.
    # Before, the avx512 class ignored avx512dq, which the compiled code's check required.
    import itertools

    base = {"sse4_2", "avx"} | ({"avx2", "fma"} if isa == "avx512" else set())
    names = sorted({f for _, need in integrity.ISA_CLASSES[1:] for f in need} - base)
    for k in range(len(names) + 1):
        for picked in itertools.combinations(names, k):
            flags = base | set(picked)
            if isa == "avx2" and any(f.startswith("avx512") for f in flags):
                continue
            assert (integrity.isa_class(flags) in classes) == integrity.host_supports(isa, flags), sorted(flags)
    assert integrity.isa_class(AVX512 - {"avx512dq"}) == "avx2"  # the drift fixed


# --- the decision: candidates + timings + margin → plan + reason ---------------------------------------------


def test_the_simplest_program_wins_unless_another_is_faster_by_the_margin():
    timings = {"float-eager": {1: 10e-6}, "float-program": {1: 120e-6}, "float-compiled": {1: 9.5e-6}}
    plan, reason = p.decide(ORDER, timings, [1], margin=0.10)
    assert [(r.max_rows, r.candidate) for r in plan] == [(None, "float-eager")]  # 5 % faster is not enough
    plan, _ = p.decide(ORDER, dict(timings, **{"float-compiled": {1: 8.9e-6}}), [1], margin=0.10)
    assert plan[0].candidate == "float-compiled"  # 11 % faster wins
    assert "float-program 120 µs (12× slower)" in reason and "≥ 10% faster" in reason


def test_the_avx2_figures_of_issue_10_keep_float_at_every_batch_size():
    # 1 thread on the 2-core AVX2 EPYC: float compiled 188 ms / int8 compiled 4,156 ms at 256; 5.9 / 11.6 ms at 1
    timings = {"float-eager": {1: 6.8 * MS, 256: 190 * MS}, "float-compiled": {1: 5.9 * MS, 256: 188 * MS},
               "int8-compiled": {1: 11.6 * MS, 256: 4156 * MS}}  # fmt: skip
    plan, reason = p.decide(ORDER, timings, [1, 256], isa="avx2")
    assert [(r.max_rows, r.candidate) for r in plan] == [(16, "float-compiled"), (None, "float-eager")]
    assert "int8-compiled 4156.0 ms (22× slower)" in reason and "on avx2" in reason


def test_winners_by_batch_size_give_one_range_each_split_at_the_geometric_mean():
    timings = {"float-eager": {1: 10e-6, 16: 60e-6, 256: 900e-6},
               "int8-compiled": {1: 30e-6, 16: 50e-6, 256: 200e-6}}  # fmt: skip
    plan, _ = p.decide(ORDER, timings, [1, 16, 256])
    assert [(r.max_rows, r.candidate) for r in plan] == [(4, "float-eager"), (None, "int8-compiled")]
    assert plan[0].ranked == ["float-eager", "int8-compiled"] and plan[1].ranked == ["int8-compiled", "float-eager"]


@pytest.mark.parametrize(
    "timings, batches, margin, match",
    [({"float-eager": {1: 1e-5}}, [1, 16], 0.1, "no candidate was measured at batch 16"),
     ({"float-eager": {1: float("nan")}}, [1], 0.1, "no candidate was measured at batch 1"),
     ({"float-eager": {1: 1e-5}}, [0], 0.1, "batches"),
     ({"float-eager": {1: 1e-5}}, [], 0.1, "batches"),
     ({"float-eager": {1: 1e-5}}, [1], 1.0, "margin")],
)  # fmt: skip
def test_decide_refuses_bad_input_naming_it(timings, batches, margin, match):
    with pytest.raises(ValueError, match=match):
        p.decide(ORDER, timings, batches, margin)


# --- the choice on the serving host ---------------------------------------------------------------------------


def _card(plan, isa_class="avx512_vnni", torch_version=torch.__version__, compiled_isa="avx512", forced=False):
    """A card whose build host measured int8 fastest at bulk batches and float eager at small ones."""
    return {
        "model": {"sequential": [["linear", 3, 1]]},
        "versions": {"torch": torch_version},
        "files": {"model.pt2": {"role": "cpu-compiled", "isa": compiled_isa, "candidate": "int8-compiled"},
                  "model_float.pt2": {"role": "float-program"}},
        "optimization": {
            "host": {"cpu": "test", "isa": compiled_isa, "isa_class": isa_class},
            "candidates": {"float-eager": {"kind": "eager", "precision": "float32", "file": "model_float.pt2"},
                           "float-program": {"kind": "program", "precision": "float32", "file": "model_float.pt2"},
                           "int8-compiled": {"kind": "compiled", "precision": "int8", "file": "model.pt2", "forced": forced}},
            "plan": plan,
        },
    }  # fmt: skip


PLAN = [{"max_rows": 4, "candidate": "float-eager", "ranked": ["float-eager", "int8-compiled"]},
        {"max_rows": None, "candidate": "int8-compiled", "ranked": ["int8-compiled", "float-eager"]}]  # fmt: skip


def test_the_build_hosts_plan_holds_on_a_host_of_its_isa_class():
    c = p.choose(_card(PLAN), VNNI, torch.__version__)
    assert c.device == "cpu"
    assert c.ranges == [(4, "float-eager", "model_float.pt2", "eager"), (None, "int8-compiled", "model.pt2", "compiled")]


def test_int8_measured_on_avx512_vnni_falls_back_to_float_on_an_avx512_host_without_vnni():
    c = p.choose(_card(PLAN), AVX512, torch.__version__)
    assert [r[1] for r in c.ranges] == ["float-eager", "float-eager"]
    assert "int8 was measured fast on avx512_vnni; this host is avx512" in c.reason


def test_a_package_for_an_isa_the_host_lacks_is_never_chosen():
    c = p.choose(_card(PLAN, forced=True), AVX2, torch.__version__)  # forced int8, but built for AVX-512
    assert [r[1] for r in c.ranges] == ["float-eager", "float-eager"]
    assert "model.pt2 needs ISA avx512, which this CPU lacks" in c.reason


def test_forced_int8_is_served_on_another_isa_class_where_it_loads():
    c = p.choose(_card(PLAN, isa_class="avx512_vnni", compiled_isa="avx2", forced=True), AVX2, torch.__version__)
    assert [r[1] for r in c.ranges] == ["float-eager", "int8-compiled"]


def test_a_package_built_with_another_torch_is_not_chosen():
    c = p.choose(_card(PLAN), VNNI, "2.0.0")
    assert [r[1] for r in c.ranges] == ["float-eager", "float-eager"]
    assert f"built with torch {torch.__version__}, this worker has torch 2.0.0" in c.reason


def test_a_gpu_worker_serves_the_float_program_on_its_gpu():
    c = p.choose(_card(PLAN), VNNI, torch.__version__, cuda_available=True, gpu_id="1")
    assert c.device == "cuda:1" and c.ranges == [(None, "float-program", "model_float.pt2", "program")]
    assert p.choose(_card(PLAN), VNNI, torch.__version__, cuda_available=False, gpu_id=0).device == "cpu"
    assert p.choose(_card(PLAN), VNNI, torch.__version__, cuda_available=True, gpu_id=None).device == "cpu"


def test_without_a_layer_list_the_eager_candidate_falls_back_to_the_float_program():
    card = _card(PLAN)
    del card["model"]["sequential"]
    c = p.choose(card, AVX2, torch.__version__)
    assert [r[1] for r in c.ranges] == ["float-program", "float-program"]


@pytest.mark.parametrize(
    "files, flags, version, expected",
    [({"model.pt2": {"role": "cpu-compiled", "isa": "avx2"}}, AVX2, torch.__version__, "model.pt2"),
     ({"model.pt2": {"role": "cpu-compiled", "isa": "avx512"}}, AVX2, torch.__version__, "model_float.pt2"),
     ({"model.pt2": {"role": "cpu-compiled", "isa": "avx2"}}, AVX2, "1.0", "model_float.pt2"),
     ({}, AVX2, torch.__version__, "model_float.pt2")],
)  # fmt: skip
def test_a_card_written_before_measured_choice_keeps_its_rule(files, flags, version, expected):
    card = {"versions": {"torch": torch.__version__}, "files": {**files, "model_float.pt2": {"role": "float-program"}}}
    assert [r[2] for r in p.choose(card, flags, version).ranges] == [expected]


def test_choose_refuses_a_card_without_a_float_program():
    with pytest.raises(ValueError, match="no float-program"):
        p.choose({"files": {}}, AVX2, torch.__version__)


# --- the eager rebuild and the program set ----------------------------------------------------------------------


def test_rebuild_sequential_answers_like_the_module_it_came_from():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    rebuilt = p.rebuild_sequential([["linear", 5, 8], ["relu"], ["linear", 8, 2]], m.state_dict())
    x = torch.randn(7, 5)
    assert torch.equal(rebuilt(x), m(x))
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        p.rebuild_sequential([["conv", 5, 8]], m.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        p.rebuild_sequential([["linear", 5, 9], ["relu"], ["linear", 9, 2]], m.state_dict())


def test_program_set_runs_the_program_of_the_batch_size():
    ps = p.ProgramSet("cpu", [(4, "a", "a.pt2", lambda x: x * 0 + 1), (None, "b", "b.pt2", lambda x: x * 0 + 2)], "test")
    assert ps(torch.zeros(4, 1)).unique().tolist() == [1.0]
    assert ps(torch.zeros(5, 1)).unique().tolist() == [2.0]
    assert ps.pick(1)[:2] == ("a", "a.pt2") and ps.files == ["a.pt2", "b.pt2"]
