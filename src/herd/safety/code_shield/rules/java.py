"""Java rules: weak crypto, XXE, command execution, deserialization, TLS and file permissions."""

from herd.safety.code_shield.rules import context
from herd.safety.code_shield.rules.base import rule

RULES = [
    rule("java-ecb-mode", "CWE-327", "warning", "A cipher in ECB mode (or AES with the provider's ECB default).",
         r"Cipher\.getInstance\s*\(\s*\"(?:[^\"/]+/ECB/[^\"]*|AES|DES|DESede|Blowfish)\""),
    rule("java-cbc-padding", "CWE-327", "warning", "CBC with PKCS5/PKCS7 padding is open to padding-oracle attacks.",
         r"Cipher\.getInstance\s*\(\s*\"[^\"]*/CBC/PKCS[57]Padding\""),
    rule("java-weak-cipher", "CWE-327", "warning", "DES, 3DES, Blowfish, RC2 and RC4 are broken ciphers.",
         r"\"(?:DES|DESede|TripleDES|Blowfish|RC2|RC4|ARCFOUR)(?:/[^\"]*)?\"|\bnew\s+NullCipher\s*\("),
    rule("java-rsa-no-oaep", "CWE-327", "warning", "RSA without OAEP padding.",
         r"Cipher\.getInstance\s*\(\s*\"RSA(?:/[^/\"]*/(?:NoPadding|PKCS1Padding))?\""),
    rule("java-weak-hash", "CWE-327", "warning", "MD2/MD4/MD5/SHA-1 are broken hashes.",
         r"MessageDigest\.getInstance\s*\(\s*\"(?:MD2|MD4|MD5|SHA-?1|SHA)\"|\bDigestUtils\.(?:md5|sha1?)\w*\s*\("),
    rule("java-weak-tls", "CWE-327", "warning", "SSLv3/TLSv1.0 are broken protocols.",
         r"SSLContext\.getInstance\s*\(\s*\"(?:SSL|SSLv3|TLSv1)\"\s*\)"),
    rule("java-hostname-verifier", "CWE-295", "warning", "A hostname verifier that accepts every host.",
         r"ALLOW_ALL_HOSTNAME_VERIFIER|NoopHostnameVerifier|verify\s*\([^)]*\)\s*\{\s*return\s+true\s*;"
         r"|checkServerTrusted\s*\([^)]*\)[^{]*\{\s*\}"),
    rule("java-command-exec", "CWE-78", "warning", "Runtime.exec/ProcessBuilder with a non-literal command.",
         r"\.exec\s*\(\s*(?!\")[^)\s]|new\s+ProcessBuilder\s*\(\s*(?!\")[^)\s]"),
    rule("java-deserialization", "CWE-502", "warning", "ObjectInputStream.readObject on untrusted data runs code.",
         r"\bnew\s+ObjectInputStream\s*\(|\.readObject\s*\(\s*\)|\bXMLDecoder\s*\(",
         # readObject() is a common method name (javax.json's JsonReader, other libraries' readers): only
         # when the code shows Java serialization's stream.
         keep_if=lambda code, m: not m.group().startswith(".") or "ObjectInputStream" in code or "XMLDecoder" in code),
    rule("java-xxe", "CWE-611", "warning", "An XML parser factory is created without disabling external entities.",
         r"(?:DocumentBuilderFactory|SAXParserFactory|XMLInputFactory|TransformerFactory|SchemaFactory)"
         r"\.new(?:Default)?Instance\s*\(",
         unless=r"disallow-doctype-decl|FEATURE_SECURE_PROCESSING|IS_SUPPORTING_EXTERNAL_ENTITIES|ACCESS_EXTERNAL_DTD"),
    rule("java-xpath-injection", "CWE-643", "warning", "An XPath expression built from strings: XPath injection.",
         r"\.(?:compile|evaluate)\s*\(\s*\"[^\"]*\"\s*\+|setXPathVariableResolver\s*\("),
    rule("java-sql-concat", "CWE-89", "error", "SQL built by string concatenation: SQL injection. Use PreparedStateme"
                                               "nt.",
         r"\.(?:executeQuery|executeUpdate|execute|prepareStatement|addBatch)\s*\(\s*\"[^\"]*\"\s*\+"),
    rule("java-weak-random", "CWE-330", "warning", "java.util.Random/Math.random are predictable; use SecureRandom.",
         r"\bnew\s+Random\s*\(|\bMath\.random\s*\(", keep_if=context.in_secret_context),
    rule("java-world-accessible", "CWE-276", "warning", "A file is created world-readable or world-writable.",
         r"MODE_WORLD_(?:READABLE|WRITEABLE)|setReadable\s*\(\s*true\s*,\s*false\s*\)"
         r"|setWritable\s*\(\s*true\s*,\s*false\s*\)|PosixFilePermission\.OTHERS_WRITE"),
    rule("java-webview-file-access", "CWE-200", "warning", "WebView content may read the local filesystem.",
         r"setAllowFileAccess(?:FromFileURLs)?\s*\(\s*true|setAllowUniversalAccessFromFileURLs\s*\(\s*true"),
    rule("java-webview-debug", "CWE-489", "warning", "WebView debugging is enabled.",
         r"setWebContentsDebuggingEnabled\s*\(\s*true"),
    rule("java-csrf-disabled", "CWE-352", "warning", "Spring Security CSRF protection is disabled.",
         r"\.csrf\s*\(\s*\)\s*\.disable\s*\(|csrf\s*\(\s*\w+\s*->\s*\w+\.disable\s*\(|csrf\(AbstractHttpConfigurer::disable"),
    rule("java-ssrf", "CWE-918", "warning", "A URL built from a variable is fetched: server-side request forgery.",
         r"new\s+URL\s*\(\s*(?!\")[^)]+\)\s*\.open(?:Connection|Stream)|\bnew\s+URL\s*\(\s*\w+\s*\)"),
    rule("java-ldap-anonymous", "CWE-306", "warning", "LDAP bind without authentication.",
         r"SECURITY_AUTHENTICATION\s*,\s*\"none\""),
    rule("java-deprecated-api", "CWE-589", "advice", "Deprecated thread or character methods.",
         r"\.(?:stop|suspend|resume)\s*\(\s*\)\s*;|Character\.(?:isJavaLetter|isJavaLetterOrDigit|isSpace)\s*\("),
    rule("java-cors-header", "CWE-942", "warning", "Access-Control-Allow-Origin set from request data.",
         r"Access-Control-Allow-Origin\"\s*,\s*(?!\")"),
]
