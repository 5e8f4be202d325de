"""The one shield interface: verdicts, the strictest-wins merge, Code Shield as a shield."""

from __future__ import annotations

import pytest

from herd.safety import Shield, Verdict
from herd.safety.shield import CodeShieldShield, Shields, strictest


def test_code_shield_shield_on_model_output():
    shield = CodeShieldShield()
    assert isinstance(shield, Shield)
    v = shield.check("Use:\n```python\nimport pickle\nobj = pickle.loads(blob)\n```")
    assert (v.action, v.categories, v.shield) == ("warn", ["CWE-502"], "code_shield")
    assert "py-pickle" in v.reason and v.details[0]["findings"][0]["line"] == 2
    assert shield.check("No code here, just words.").action == "allow"
    raw = CodeShieldShield(raw_code=True).check("#include <stdio.h>\nint main(){char b[4]; gets(b);}")
    assert raw.action == "block" and raw.categories == ["CWE-242"]


def test_strictest_verdict_wins():
    class Fixed:
        def __init__(self, name, action, cats):
            self.name, self.action, self.cats = name, action, cats

        def check(self, text, role="assistant"):
            return Verdict(self.action, list(self.cats), {c: 1.0 for c in self.cats}, self.name)

    merged = Shields([Fixed("a", "warn", ["X"]), Fixed("b", "block", ["Y"]), Fixed("c", "allow", [])]).check("t")
    assert merged.action == "block" and merged.shield == "b"
    assert merged.categories == ["X", "Y"] and merged.scores == {"a.X": 1.0, "b.Y": 1.0}
    assert strictest([]).action == "allow"
    with pytest.raises(ValueError, match="action"):
        Verdict("deny")
