"""Credentials pasted into code, in any language (CWE-798 hard-coded credentials, CWE-312 keys in clear)."""

from herd.safety.code_shield.rules.base import rule

RULES = [
    rule("secret-private-key", "CWE-312", "warning", "A private key is embedded in the code; load it from a secret st"
                                                     "ore.",
         r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----", hints=('PRIVATE KEY',)),
    rule("secret-gcp-api-key", "CWE-798", "warning", "A Google Cloud API key is hard-coded.",
         r"\bAIza[0-9A-Za-z_\-]{35}\b", hints=('AIza',)),
    rule("secret-gcp-oauth-token", "CWE-798", "warning", "A Google OAuth access token is hard-coded.",
         r"\bya29\.[0-9A-Za-z_\-]{20,}", hints=('ya29.',)),
    rule("secret-github-token", "CWE-798", "warning", "A GitHub access token is hard-coded.",
         r"\b(?:ghp|gho|ghu|ghs|ghr)_[0-9A-Za-z]{36}\b", hints=('ghp_', 'gho_', 'ghu_', 'ghs_', 'ghr_')),
    rule("secret-aws-access-key", "CWE-798", "warning", "An AWS access key id is hard-coded.",
         r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", hints=('AKIA', 'ASIA')),
    rule("secret-stripe-key", "CWE-798", "warning", "A Stripe secret key is hard-coded.",
         r"\b(?:sk|rk)_live_[0-9A-Za-z]{20,}", hints=('_live_',)),
    rule("secret-twilio-key", "CWE-798", "warning", "A Twilio API key is hard-coded.",
         r"\bSK[0-9a-fA-F]{32}\b", hints=('SK',)),
    rule("secret-facebook-graph-token", "CWE-798", "warning", "A Facebook Graph API access token is hard-coded.",
         r"\bEAA[A-Za-z0-9]{30,}", hints=('EAA',)),
    rule("secret-meta-app-token", "CWE-798", "warning", "A long Meta/Facebook/Instagram app token is hard-coded.",
         r"(?<![A-Za-z0-9])(?:EAA|IG)[A-Za-z0-9]{90,400}", hints=('EAA', 'IG')),
    rule("secret-slack-token", "CWE-798", "warning", "A Slack token is hard-coded.",
         r"\bxox[baprs]-[0-9A-Za-z\-]{10,}", hints=('xox',)),
]
