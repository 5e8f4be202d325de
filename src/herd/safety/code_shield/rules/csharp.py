"""C# rules: weak crypto, injection sinks, unsafe deserialization, cookies, certificate checks."""

import re

from herd.safety.code_shield.rules import context
from herd.safety.code_shield.rules.base import rule

RULES = [
    rule("cs-weak-cipher", "CWE-327", "warning", "DES, TripleDES and RC2 are broken ciphers.",
         r"\b(?:DES|TripleDES|RC2)(?:CryptoServiceProvider)?\.Create\s*\(|new\s+(?:DES|TripleDES|RC2)CryptoServiceProvider\s*\("),
    rule("cs-weak-cipher-mode", "CWE-327", "warning", "ECB/OFB/CFB/CTS modes are weak or unauthenticated.",
         r"CipherMode\.(?:ECB|OFB|CFB|CTS)\b"),
    rule("cs-weak-hash", "CWE-327", "warning", "MD5/SHA-1 are broken hashes.",
         r"\b(?:MD5|SHA1)(?:CryptoServiceProvider|Managed|Cng)?\.Create\s*\(|new\s+(?:MD5|SHA1)(?:CryptoServiceProvider|Managed|Cng)\s*\("
         r"|HashAlgorithm\.Create\s*\(\s*\"(?:MD5|SHA1)\""),
    rule("cs-weak-random", "CWE-338", "warning", "System.Random is predictable; use RandomNumberGenerator.",
         r"\bnew\s+Random\s*\(", keep_if=context.in_secret_context),
    rule("cs-command-injection", "CWE-78", "warning", "A process is started with a non-literal command.",
         r"Process\.Start\s*\(\s*(?!\")[^)\s]|\.(?:FileName|Arguments)\s*=\s*+(?!\")[^;]*\+"),
    rule("cs-sql-injection", "CWE-89", "error", "SQL built by string concatenation or interpolation: SQL injection.",
         r"\b(?:SqlCommand|OleDbCommand|OdbcCommand|MySqlCommand|SQLiteCommand)\s*\(\s*(?:\$\"|\"[^\"]*\"\s*\+)"
         r"|\.CommandText\s*=\s*(?:\$\"|\"[^\"]*\"\s*\+)|\.(?:FromSqlRaw|ExecuteSqlRaw|ExecuteSqlCommand)\s*\(\s*(?:\$\"|\"[^\"]*\"\s*\+)"),
    rule("cs-insecure-deserialization", "CWE-502", "warning", "BinaryFormatter/SoapFormatter/LosFormatter/NetDataCont"
                                                              "ractSerializer run code.",
         r"\bnew\s+(?:BinaryFormatter|SoapFormatter|LosFormatter|ObjectStateFormatter|NetDataContractSerializer)\s*\("
         r"|\b\w*[Ff]ormatter\.Deserialize\s*\(|TypeNameHandling\s*=\s*TypeNameHandling\.(?:All|Auto|Objects)|JavaScriptSerializer\s*\(\s*new\s+SimpleTypeResolver"),
    rule("cs-validate-input-off", "CWE-554", "warning", "[ValidateInput(false)] turns off request validation.",
         r"\[\s*ValidateInput\s*\(\s*false\s*\)\s*\]"),
    rule("cs-csrf", "CWE-352", "warning", "A POST action without [ValidateAntiForgeryToken].",
         r"\[\s*HttpPost\s*\]", unless=r"ValidateAntiForgeryToken|AutoValidateAntiforgeryToken|IgnoreAntiforgeryToken",
         # Web API 2 controllers: MVC's anti-forgery filter does not apply to them (token-authenticated APIs).
         keep_if=lambda code, m: re.search(r":\s*ApiController\b", code) is None),
    rule("cs-open-redirect", "CWE-601", "warning", "Redirect to a URL taken from the request.",
         r"\bRedirect\s*\(\s*(?:Request\.|returnUrl|url\b|redirectUrl)", flags=2),
    rule("cs-weak-password-policy", "CWE-521", "warning", "Password requirements are weak.",
         r"RequiredLength\s*=\s*[0-7]\b|Require(?:Digit|Lowercase|Uppercase|NonAlphanumeric)\s*=\s*false"),
    rule("cs-xpath-injection", "CWE-643", "warning", "An XPath query built from strings: XPath injection.",
         r"\.(?:SelectNodes|SelectSingleNode|Compile|Evaluate)\s*\(\s*(?:\$\"|\"[^\"]*\"\s*\+)"),
    rule("cs-xxe", "CWE-611", "warning", "The XML parser resolves external entities or DTDs.",
         r"DtdProcessing\s*=\s*DtdProcessing\.Parse|ProhibitDtd\s*=\s*false|XmlResolver\s*=\s*new\s+XmlUrlResolver"
         r"|EnableScript\s*=\s*true"),
    rule("cs-cert-validation-off", "CWE-295", "warning", "Server certificate validation always succeeds.",
         r"ServerCertificateValidationCallback\s*[+]?=\s*[^;]*=>\s*true|ServerCertificateCustomValidationCallback\s*=\s*[^;]*=>\s*true"
         r"|DangerousAcceptAnyServerCertificateValidator"),
    rule("cs-cookie-flags", "CWE-614", "warning", "A cookie is sent without the Secure or HttpOnly flag.",
         r"\.(?:Secure|HttpOnly)\s*=\s*false\b"),
    rule("cs-ldap-injection", "CWE-90", "warning", "An LDAP filter built from strings: LDAP injection.",
         r"\.Filter\s*=\s*(?:\$\"|\"[^\"]*\"\s*\+)|new\s+DirectorySearcher\s*\([^)]*(?:\$\"|\"\s*\+)"),
    rule("cs-path-traversal", "CWE-22", "warning", "A file path built from request data: path traversal.",
         r"(?:File|Directory)\.\w+\s*\([^;]*Request\.|Path\.Combine\s*\([^;]*Request\."),
    rule("cs-webform-leak", "CWE-554", "warning", "View state MAC or encryption is disabled.",
         r"(?:enableViewStateMac|EnableViewStateMac)\s*=\s*\"?false|ViewStateEncryptionMode\s*=\s*\"?Never"),
]
