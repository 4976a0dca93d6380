"""The per-step losses of a 20-step tiny pretraining run equal the committed golden file exactly.

A change that is meant to alter the numbers regenerates the file (``python scripts/golden_losses.py
--update``) and says why in its commit; any other difference is a regression in masking, sampling, task
draws, the model, the losses or the optimizer.
"""
import json

from scripts.golden_losses import GOLDEN, compute, differences


def test_pretraining_losses_equal_the_golden_file(tmp_path):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = compute(tmp_path)
    objectives = {step["task"].split("_")[0] for step in golden["steps"]}
    assert objectives == {"mlm", "itm", "mrtm", "vtlm"}, objectives  # the golden run covers all four
    diff = differences(golden["steps"], got)
    assert not diff, ("per-step losses differ from the golden file (made with torch "
                      f"{golden['torch']} on {golden['machine']}); if the change is meant to alter them, run "
                      f"`{golden['regenerate']}`:\n" + "\n".join(diff))
