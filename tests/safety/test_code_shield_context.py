"""Rules tightened with context checks (``rules.context``): each keeps a true positive and drops the
false positive it was tightened for (most taken from the corpus's "secure" side, see
test_code_shield.REVIEWED_SECURE_SIDE)."""

from __future__ import annotations

import pytest

from herd.safety.code_shield import scan
from herd.safety.code_shield.rules import context


def rules_of(code: str, language: str) -> set[str]:
    return {f.rule for f in scan(code, language).findings}


def test_words_split_identifiers_and_secret_words():
    assert context.words("genSessionToken api_keys HTTPServer") >= {"gen", "session", "token", "api", "keys", "http",
                                                                    "server"}
    assert context.mentions_secret("String makeCsrfToken()") and context.mentions_secret("$api_key = x")
    assert not context.mentions_secret("$api_keys[rand(0, 4)]")  # picks one of several keys, makes none
    assert not context.mentions_secret("Vec2u pos(rand() % w, rand() % h);")


def test_enclosing_header_finds_the_function_not_a_control_statement():
    code = "unsigned make_session_id(void) {\n  int x = 1;\n  if (x) {\n    return rand();\n  }\n}\n"
    assert context.enclosing_header(code, code.index("rand")).startswith("unsigned make_session_id")
    js = "NRS.send = function (requestType, data) {\n  var a = 1;\n  data += Math.random();\n};\n"
    assert "function" in context.enclosing_header(js, js.index("Math"))
    assert context.enclosing_header("x = 1\ny = rand()\n", 8) == ""


@pytest.mark.parametrize("lang,secret,plain,rule", [
    # C rand()/srand(const): CWE-338/335 need a security context (corpus #65, #20; the TP is corpus #4's shape).
    ("c", "void f(void) {\n  /* generate shared-secret */\n  MD5_Update(&c, x, n);\n  ltostr(hh, rand());\n}",
     "void place(void) {\n  Vec2u pos(rand() % w, rand() % h);\n}", "c-weak-prng"),
    ("c", "unsigned make_session_id(void) {\n  return rand();\n}", "int main(void) {\n  int r = rand() % 6;\n}",
     "c-weak-prng"),
    ("c", "void generate_key(void) {\n  srand(42);\n}", "  // initialize variables\n  srand(42);\n  for (;;) {}",
     "c-fixed-seed"),
    ("cpp", "auto make_token() {\n  std::mt19937 gen(4711);\n}", "void bench() {\n  std::mt19937 gen(4711);\n}",
     "cpp-fixed-seed-engine"),
    # C# new Random() (corpus #109, #110).
    ("csharp", "string MakeToken()\n{\n    var r = new Random();\n}",
     "private void CreateTree(int x, int y, int z)\n{\n    Random random = new Random();\n}", "cs-weak-random"),
    # Java new Random() (corpus #149).
    ("java", "String sessionId = Long.toString(new Random().nextLong());",
     "public void testEvents() {\n  Random rand = new Random();\n}", "java-weak-random"),
    # JavaScript Math.random (corpus #191: a cache-buster).
    ("javascript", "var sessionId = Math.random().toString(36);", "data += '&random=' + Math.random();",
     "js-weak-random"),
    # PHP rand (corpus #220: a usort comparator).
    ("php", "<?php\nfunction generateToken() {\n  return rand(1000, 9999);\n}",
     "<?php\nusort($items, function () {\n    return rand(-1, 1);\n});", "php-weak-random"),
    # PHP rand as an index (corpus #230): picking one of several API keys makes no key; picking the
    # characters of a password does.
    ("php", "<?php\nfor ($i = 0; $i < 8; $i++) {\n  $password .= $chars[rand(0, 61)];\n}",
     '<?php\n$url .= "&key=" . $api_keys[rand(0,4)];', "php-weak-random"),
    ("python", "import random\ndef make_password(chars):\n    return chars[random.randrange(62)]\n",
     "import random\ndef pick(tokens):\n    return tokens[random.randrange(3)]\n", "py-weak-random"),
    # Python random (corpus #278), AST path and the fallback for fragments that do not parse.
    ("python", "import random\ndef make_password(cs):\n    return ''.join(random.choice(cs) for _ in range(8))\n",
     "import random\ndef collage(images):\n    random.shuffle(images)\n", "py-weak-random"),
    ("python", "    token = random.getrandbits(64)\n  else:\n", "    random.shuffle(images)\n  else:\n",
     "py-weak-random"),
    ("python", "import random\ndef generate_key():\n    random.seed(0)\n",
     "import random\ndef test_sim():\n    random.seed(0)\n", "py-fixed-seed"),
])
def test_weak_randomness_only_in_a_secret_context(lang, secret, plain, rule):
    assert rule in rules_of(secret, lang)
    assert rule not in rules_of(plain, lang)


def test_pseudo_random_bytes_needs_no_context():
    assert "js-weak-random" in rules_of("const b = crypto.pseudoRandomBytes(16);", "javascript")


def test_strcat_of_a_literal_is_not_reported():  # corpus #33; the peer's rule also wants an identifier
    assert "c-strcat" in rules_of("strcat(newString, tig->string);", "c")
    assert "c-strcat" not in rules_of('strcat(home_dir, "/wsf_c");', "c")


def test_strcpy_between_arrays_that_fit_is_not_reported():  # corpus #60
    fits = 'char buf0[64], buf1[64];\nsprintf(buf1, "test");\nstrcpy(buf0, buf1);'
    assert "c-strcpy" not in rules_of(fits, "c")
    assert "c-strcpy" not in rules_of('char a[8];\nstrcpy(a, "1234567");', "c")
    assert "c-strcpy" in rules_of('char a[8];\nstrcpy(a, "12345678");', "c")  # 9 bytes with the NUL
    assert "c-strcpy" in rules_of("char a[64], b[128];\nstrcpy(a, b);", "c")
    assert "c-strcpy" in rules_of("void f(char *s) { char b[8]; strcpy(b, s); }", "c")
    assert "c-strcpy" in rules_of("strcpy(ms8_Buf, s_String);", "cpp")  # sizes unknown: reported


@pytest.mark.parametrize("call,decl,rule", [
    ("MD5(d, n, out);", "unsigned char *MD4(const unsigned char *d, size_t n, unsigned char *md);", "c-weak-hash"),
    ("return EVP_md5();", "const EVP_MD *EVP_md5(void);", "c-weak-hash"),
    ("EVP_EncryptInit_ex(ctx, EVP_des_ede3_cbc(), NULL, k, iv);", "const EVP_CIPHER *EVP_des_ede3(void);",
     "c-weak-cipher"),
    ("EVP_EncryptInit_ex(ctx, EVP_aes_128_ecb(), NULL, k, NULL);", "const EVP_CIPHER *EVP_aes_128_ecb(void);",
     "c-ecb-mode"),
    ("EVP_EncryptInit_ex(ctx, EVP_aes_128_cbc(), NULL, k, iv);", "const EVP_CIPHER *EVP_aes_128_cbc(void);",
     "c-unauthenticated-encryption"),
])
def test_c_crypto_prototypes_are_not_uses(call, decl, rule):  # corpus #37 (openssl/evp.h prototypes)
    assert rule in rules_of(call, "c")
    assert rule not in rules_of(decl, "c")


def test_csharp_process_arguments_rule_no_longer_matches_literal_first_strings():  # corpus #106
    assert "cs-command-injection" in rules_of('info.Arguments = args + " /q";', "csharp")
    assert "cs-command-injection" in rules_of("Process.Start(info);", "csharp")
    assert "cs-command-injection" not in rules_of('info.Arguments = "\\"" + tempXsdFile + "\\"";', "csharp")


def test_csrf_not_reported_on_web_api_controllers():  # corpus #111
    mvc = "public class AccountController : Controller\n{\n    [HttpPost]\n    public ActionResult Save() {}\n}"
    api = "public class AccountController : ApiController\n{\n    [HttpPost]\n    public IHttpActionResult Save() {}\n}"
    assert "cs-csrf" in rules_of(mvc, "csharp")
    assert "cs-csrf" not in rules_of(api, "csharp")


def test_read_object_needs_java_serialization_in_sight():  # corpus #142/#157/#159
    java = "ObjectInputStream in = new ObjectInputStream(sock.getInputStream());\nObject o = in.readObject();"
    assert "java-deserialization" in rules_of(java, "java")
    assert "java-deserialization" in rules_of("XMLDecoder d = new XMLDecoder(in);", "java")
    json = "JsonReader reader = Json.createReader(in);\nJsonObject o = reader.readObject();"
    assert "java-deserialization" not in rules_of(json, "java")


def test_post_message_of_a_literal_to_any_origin_is_not_reported():  # corpus #184
    assert "js-postmessage-origin" in rules_of("win.postMessage(userData, '*');", "javascript")
    assert "js-postmessage-origin" in rules_of("window.postMessage({info: {img: src}}, '*');", "javascript")
    assert "js-postmessage-origin" not in rules_of("iframe.contentWindow.postMessage('slide:start', '*');",
                                                   "javascript")


def test_require_and_fs_with_a_fixed_name_under_a_base_dir():  # corpus #187, #188
    assert "js-non-literal-require" in rules_of("const m = require(name);", "javascript")
    assert "js-non-literal-require" in rules_of("const c = require(path.join(process.cwd(), configFN));",
                                                "javascript")
    assert "js-non-literal-require" not in rules_of("var logger = require(ENDURO_FOLDER + '/libs/logger')",
                                                    "javascript")
    assert "js-non-literal-require" not in rules_of("var x = require(path.join(__dirname, 'lib', 'x.js'));",
                                                    "javascript")
    assert "js-path-traversal" in rules_of("fs.readFileSync(req.query.file);", "javascript")
    assert "js-path-traversal" in rules_of("fs.readFileSync(dir + name);", "javascript")
    assert "js-path-traversal" not in rules_of("var key = fs.readFileSync(common.fixturesDir + '/keys/a.pem');",
                                               "javascript")


def test_child_process_with_a_command_built_from_constants():  # corpus #198
    const = "var id = 'Developer ID';\nchild_process.exec('codesign --sign \"' + id + '\" App.app', cb);"
    assert "js-child-process" not in rules_of(const, "javascript")
    tainted = "var id = 'Developer ID';\nid = req.body.id;\nchild_process.exec('codesign --sign ' + id, cb);"
    assert "js-child-process" in rules_of(tainted, "javascript")
    assert "js-child-process" in rules_of("exec('git clone ' + repository + ' ' + dep, cb);", "javascript")
