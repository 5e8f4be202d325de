"""Safety tools: Llama Guard 3, Prompt Guard, Code Shield, and the one shield interface over them.

Every shield has ``check(text, role) -> Verdict`` (action block / warn / allow, categories,
scores): ``CodeShieldShield``, ``LlamaGuard``, ``PromptGuard``; ``Shields`` combines them and
``guarded_stream`` applies one to a streaming generation.
"""

from herd.safety.shield import ACTIONS, CodeShieldShield, Shield, Shields, Verdict, strictest

__all__ = ["ACTIONS", "CodeShieldShield", "Shield", "Shields", "Verdict", "strictest"]
