"""The per-step losses of a 20-step tiny pretraining run equal the committed golden file exactly (on the
CPU it was made on; within 1e-5 relative on another, whose float kernels differ in the last bits).

A change that is meant to alter the numbers regenerates the file (``python scripts/golden_losses.py
--update``) and says why in its commit; any other difference is a regression in masking, sampling, task
draws, the model, the losses or the optimizer.
"""
import json

from scripts.golden_losses import CROSS_CPU_RTOL, GOLDEN, compute, differences, golden_rtol


def test_pretraining_losses_equal_the_golden_file(tmp_path):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = compute(tmp_path)
    objectives = {step["task"].split("_")[0] for step in golden["steps"]}
    assert objectives == {"mlm", "itm", "mrtm", "vtlm"}, objectives  # the golden run covers all four
    rtol = golden_rtol(golden)
    diff = differences(golden["steps"], got, rtol)
    assert not diff, ("per-step losses differ from the golden file (made on "
                      f"{golden.get('cpu', golden['machine'])}; compared with rtol {rtol}); if the change is meant "
                      "to alter them, run "
                      f"`{golden['regenerate']}`:\n" + "\n".join(diff))


def test_the_cross_cpu_tolerance_still_sees_a_real_change():
    steps = [{"step": 1, "task": "mlm_cap_en", "loss": 6.0997653}]
    assert not differences(steps, [dict(steps[0], loss=6.0997648)], CROSS_CPU_RTOL)  # measured across CPUs
    assert differences(steps, [dict(steps[0], loss=6.0997648)], 0.0)
    assert differences(steps, [dict(steps[0], loss=6.1)], CROSS_CPU_RTOL)  # 3.8e-5 relative: a real change
    assert differences(steps, [dict(steps[0], task="itm_cap_en")], CROSS_CPU_RTOL)
