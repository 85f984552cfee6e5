"""A rule's `sources(...)` covers every project module its command imports (a static closure
of the command's imports, lazy ones included: mmablate.imports), so editing any of them reruns
the stage. Command-line plumbing (mmablate.imports.PLUMBING) is left out by design."""
import ast
import re

import pytest

from .conftest import REPO
from mmablate.imports import PLUMBING, command_sources
from mmablate.pipeline import sources


def rules():
    """rule name → (its `sources(...)` arguments, the mmablate command its shell line runs)."""
    out = {}
    for f in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = f.read_text()
        mma = re.search(r'^MMA_SRC = "([^"]+)"', (REPO / "workflow/rules/mmalign_inputs.smk")
                        .read_text(), re.M).group(1)
        for m in re.finditer(r"^rule (\w+):\n((?:    .*\n|\n)*)", text, re.M):
            body = m.group(2)
            src = re.search(r"src=sources\((.*?)\),\n", body, re.S)
            # the shell line is split over string literals ("…--" "  sub-cmd …"): join them first
            shell = re.sub(r'"\s*\n\s*"', "", body)
            cmd = re.search(r"python -m mmablate (?:launch .*? -- )?([\w-]+)", shell)
            assert src and cmd, f"{f.name}: rule {m.group(1)} has no sources(...) or command"
            args = ast.literal_eval("(" + src.group(1).replace('f"{MMA_SRC}/', f'"{mma}/') + ",)")
            out[m.group(1)] = (args, cmd.group(1))
    return out


RULES = rules()


def test_every_rule_found():
    assert {"rankclip_train", "pairrank_eval", "pcclip_finetune", "mmalign_dpo", "table",
            "world"} <= set(RULES)
    assert len(RULES) >= 25


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_sources_cover_the_command_imports(rule):
    args, cmd = RULES[rule]
    have = {s.removeprefix("src/mmablate/") for s in sources(*args)}
    missing = sorted(set(command_sources(cmd)) - have)
    assert not missing, f"rule {rule} (`{cmd}`): add to its sources(...): {missing}"


def test_the_closure_follows_lazy_imports():
    """pairrank-eval imports its models inside functions; the closure still finds them (the
    rule once missed models/, data/pickapic.py and training/)."""
    need = command_sources("pairrank-eval")
    assert {"studies/pairrank/evaluate.py", "studies/pairrank/rewards.py", "models/clip.py",
            "data/pickapic.py", "training/checkpoint.py"} <= set(need)
    assert not any(p.split("/")[-1] in PLUMBING for p in need)
    assert "pipeline.py" not in need and not any(p.startswith("plans/") for p in need)
