"""Rust rules: unsafe blocks, injection-prone APIs, weak hashes, TLS verification off, temp dirs."""

from herd.safety.code_shield.rules.base import rule

RULES = [
    rule("rust-unsafe", "CWE-676", "advice", "unsafe code: review memory safety by hand"
                                             ".", r"\bunsafe\s*\{|\bunsafe\s+fn\b"),
    rule("rust-command", "CWE-78", "warning", "A process run from a non-literal program or through a shell.",
         r"Command::new\s*\(\s*(?!\")[^)\s]|Command::new\s*\(\s*\"(?:sh|bash|cmd|cmd\.exe|powershell)\""),
    rule("rust-sql-format", "CWE-89", "error", "SQL built with format!: SQL injection. Bind parameters instead.",
         r"\b(?:query|execute|query_as|prepare)\w*\s*\(\s*&?format!\s*\(|format!\s*\(\s*\"\s*(?:SELECT|INSERT|UPDATE|DELETE)\b",
         flags=2),
    rule("rust-env-args", "CWE-807", "advice", "Program arguments and current_exe are attacker-controlled.",
         r"\benv::(?:args_os|args|current_exe)\s*\("),
    rule("rust-temp-dir", "CWE-807", "advice", "env::temp_dir is shared and predictable; use the tempfile crate.",
         r"\benv::temp_dir\s*\("),
    rule("rust-weak-hash", "CWE-328", "advice", "MD2/MD4/MD5/SHA-1 are broken hashes.",
         r"\b(?:Md[245]|Sha1)::(?:new|digest|default)\b|\bmd5::compute\s*\(|MessageDigest::(?:md5|sha1)\s*\("),
    rule("rust-weak-cipher", "CWE-328", "advice", "DES/RC4/Blowfish/ECB ciphers from openssl are outdated.",
         r"Cipher::(?:des_\w+|rc4|bf_\w+|\w+_ecb)\s*\("),
    rule("rust-tls-invalid", "CWE-295", "advice", "TLS accepts invalid certificates or hostnames.",
         r"danger_accept_invalid_(?:certs|hostnames)\s*\(\s*true|SslVerifyMode::NONE|set_verify\s*\(\s*SslVerifyMode::NONE"
         r"|dangerous\s*\(\s*\)\s*\.set_certificate_verifier"),
]
