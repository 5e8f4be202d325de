"""PHP rules: injection sinks fed by request data, dangerous functions, weak crypto, unsafe uploads."""

from herd.safety.code_shield.rules import context
from herd.safety.code_shield.rules.base import rule

_INPUT = r"\$_(?:GET|POST|REQUEST|COOKIE|SERVER|FILES)\b"

RULES = [
    rule("php-eval", "CWE-94", "warning", "eval/assert/create_function run code built at run time.",
         r"(?<![\w>])(?:eval|assert|create_function)\s*\(\s*(?![\"'][^\"'$]*[\"']\s*\))"
         r"|preg_replace\s*\(\s*[\"'](.).*\1[a-z]*e[a-z]*[\"']"),
    rule("php-command-exec", "CWE-78", "error", "A shell command built from request data: command injection.",
         r"(?<![\w>])(?:exec|shell_exec|system|passthru|popen|proc_open|pcntl_exec)\s*\([^;]*" + _INPUT),
    rule("php-command-call", "CWE-78", "warning", "A shell command function called with a non-literal command.",
         r"(?<![\w>])(?:exec|shell_exec|system|passthru|popen|proc_open)\s*\(\s*(?![\"'][^\"'$]*[\"']\s*[,)])"),
    rule("php-backticks", "CWE-78", "warning", "Backticks run a shell command.", r"`[^`\n]*\$[^`\n]*`"),
    rule("php-unserialize", "CWE-502", "warning", "unserialize() of untrusted data can instantiate objects.",
         r"(?<![\w>])unserialize\s*\(", unless=r"allowed_classes\s*=>\s*false"),
    rule("php-sql-injection", "CWE-89", "error", "SQL built from request data: SQL injection.",
         r"(?:SELECT|INSERT|UPDATE|DELETE)\b[^;]*" + _INPUT + r"|(?:mysqli?_query|->query)\s*\([^;]*" + _INPUT,
         flags=2),
    rule("php-xss-echo", "CWE-79", "warning", "Request data echoed without escaping: cross-site scripting.",
         r"\b(?:echo|print)\b[^;]*" + _INPUT, unless=r"htmlspecialchars|htmlentities|intval|filter_"),
    rule("php-info-exposure", "CWE-200", "warning", "phpinfo()/display_errors expose server details.",
         r"(?<![\w>])phpinfo\s*\(|ini_set\s*\(\s*[\"']display_errors[\"']\s*,\s*[\"']?(?:1|on|true)",
         flags=2),
    rule("php-error-message", "CWE-209", "warning", "An error message with internal details is shown to the user.",
         r"\b(?:die|exit|echo)\s*\(?[^;]*(?:mysqli?_error|->error\b|getMessage\s*\(|error_get_last)"),
    rule("php-weak-crypto", "CWE-327", "warning", "md5/sha1/crc32 or mcrypt/DES/RC4 for security is broken.",
         r"(?<![\w>])(?:md5|sha1|crc32|md5_file|sha1_file|str_rot13)\s*\(|\bmcrypt_\w+\s*\("
         r"|openssl_encrypt\s*\([^;]*[\"'](?:des|rc4|bf|[^\"']*-ecb)[^\"']*[\"']", flags=2),
    rule("php-hash-no-salt", "CWE-759", "warning", "A password hashed without salt; use password_hash.",
         r"\bhash\s*\(\s*[\"'](?:sha\d+|md5|whirlpool)[\"']\s*,\s*\$\w*pass", flags=2),
    rule("php-path-traversal", "CWE-22", "warning", "A file path from request data: path traversal.",
         r"(?<![\w>])(?:include|require|include_once|require_once|file_get_contents|fopen|readfile|file|unlink)"
         r"\s*\(?[^;]*" + _INPUT),
    rule("php-permissions", "CWE-732", "warning", "World-writable permissions.", r"\bchmod\s*\([^;]*0?777\b"),
    rule("php-ssrf", "CWE-918", "warning", "A URL from request data is fetched: server-side request forgery.",
         r"(?:curl_init|curl_setopt|file_get_contents|fopen)\s*\([^;]*" + _INPUT),
    rule("php-auth-spoofing", "CWE-290", "warning", "Trust decided on a spoofable header (client IP, referer).",
         r"\$_SERVER\s*\[\s*[\"'](?:HTTP_X_FORWARDED_FOR|HTTP_CLIENT_IP|HTTP_REFERER|REMOTE_ADDR)[\"']\s*\]\s*[!=]=",
         ),
    rule("php-open-redirect", "CWE-601", "warning", "Redirect to a URL from request data.",
         r"header\s*\(\s*[\"']Location:[^;]*" + _INPUT, flags=2),
    rule("php-file-upload", "CWE-434", "warning", "An uploaded file is moved without checking its type.",
         r"move_uploaded_file\s*\(", unless=r"mime|extension|pathinfo|finfo"),
    rule("php-weak-random", "CWE-330", "warning", "rand/mt_rand/uniqid are predictable; use random_bytes/random_int.",
         r"(?<![\w>])(?:rand|mt_rand|uniqid|lcg_value|mt_srand|srand)\s*\(", keep_if=context.in_secret_context),
    rule("php-extract", "CWE-621", "warning", "extract() on request data overwrites variables.",
         r"(?<![\w>])extract\s*\(\s*" + _INPUT),
    rule("php-xxe", "CWE-611", "warning", "XML parsed with entity substitution (LIBXML_NOENT).", r"LIBXML_NOENT"),
    rule("php-missing-authz", "CWE-862", "advice", "A destructive action on request data without an authorization che"
                                                   "ck.",
         r"(?:unlink|rmdir|DELETE\s+FROM|DROP\s+TABLE)[^;]*" + _INPUT, flags=2),
    rule("php-insecure-cookie", "CWE-311", "warning", "setcookie without the secure flag.",
         r"\bsetcookie\s*\(\s*[^,;]+,\s*[^,;]+\s*\)\s*;"),
]
