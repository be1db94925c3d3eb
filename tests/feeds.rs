//! The HTTP feed server with real clients: `twine upload` publishes to `cairn serve`, `pip
//! install` installs from it, and bad requests get clear 4xx answers that change nothing.
//! Packages are built here (a wheel and an sdist, by Python's own zipfile and tarfile), so
//! nothing comes from outside.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use crate::util::{Instance, Server};

/// Builds `cairn_alpha-1.0.0.tar.gz` (an sdist with setup.py) and
/// `cairn_beta-2.0.0-py3-none-any.whl` (a wheel that requires cairn-alpha) in `dir`.
const BUILD: &str = r#"
import base64, hashlib, io, sys, tarfile, zipfile, os
out = sys.argv[1]
def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"
files = {
    "cairn_beta/__init__.py": b"import cairn_alpha\nVALUE = cairn_alpha.VALUE + 1\n",
    "cairn_beta-2.0.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: Cairn_Beta\nVersion: 2.0.0\nSummary: beta\nRequires-Python: >=3.7\nRequires-Dist: cairn-alpha>=1.0\n",
    "cairn_beta-2.0.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: cairn-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = [record_line(p, d) for p, d in files.items()] + ["cairn_beta-2.0.0.dist-info/RECORD,,"]
with zipfile.ZipFile(os.path.join(out, "cairn_beta-2.0.0-py3-none-any.whl"), "w") as z:
    for p, d in files.items():
        z.writestr(p, d)
    z.writestr("cairn_beta-2.0.0.dist-info/RECORD", "\n".join(record) + "\n")
top = "cairn_alpha-1.0.0"
sdist = {
    f"{top}/PKG-INFO": b"Metadata-Version: 2.1\nName: cairn-alpha\nVersion: 1.0.0\nSummary: alpha\n",
    f"{top}/setup.py": b"from setuptools import setup\nsetup(name='cairn-alpha', version='1.0.0', py_modules=['cairn_alpha'])\n",
    f"{top}/cairn_alpha.py": b"VALUE = 41\n",
}
with tarfile.open(os.path.join(out, f"{top}.tar.gz"), "w:gz") as t:
    for p, d in sdist.items():
        info = tarfile.TarInfo(p)
        info.size = len(d)
        t.addfile(info, io.BytesIO(d))
"#;

/// The wheel `cairn_beta` 2.0.0 (which needs `cairn-alpha`) and the sdist `cairn_alpha`
/// 1.0.0, built by [`BUILD`] in the instance's directory.
pub(crate) fn build_python_packages(inst: &Instance) -> (PathBuf, PathBuf) {
    let pkgs: PathBuf = inst.path("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    run(python(&["-c", BUILD]).arg(&pkgs));
    (
        pkgs.join("cairn_beta-2.0.0-py3-none-any.whl"),
        pkgs.join("cairn_alpha-1.0.0.tar.gz"),
    )
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A Python command with no pip configuration or extra package sources from the machine.
pub(crate) fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.args(args)
        .env_remove("PIP_FIND_LINKS")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    c
}

pub(crate) fn twine_upload(url: &str, token: &str, file: &Path) -> Output {
    python(&[
        "-m",
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        url,
        "-u",
        "__token__",
        "-p",
        token,
    ])
    .arg(file)
    .output()
    .expect("twine runs (pip install twine)")
}

/// One HTTP/1.1 request over a plain TCP socket (`HOST` in `head` becomes the server's
/// address); the status and the whole response as text.
pub(crate) fn http(addr: &str, head: &str) -> (u16, String) {
    raw_http(addr, head, b"")
}

/// `GET path` of the admin API with the bearer token `admin`; the status and the whole
/// response as text.
pub(crate) fn admin_get(addr: &str, admin: &str, path: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"),
    )
}

pub(crate) fn raw_http(addr: &str, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let _ = s.write_all(head.replace("HOST", host).as_bytes());
    let _ = s.write_all(body);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The project names the JSON simple index lists.
fn projects(addr: &str) -> Vec<String> {
    let (status, text) = http(
        addr,
        "GET /feeds/pypi/simple/ HTTP/1.1\r\nHost: HOST\r\nAccept: application/vnd.pypi.simple.v1+json\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An instance with `feeds` (name, type) that anyone may read, uploads up to 1 MiB, free
/// ports, and one token for each of `scopes`.
fn instance_with(feeds: &[(&str, &str)], scopes: &[&str]) -> (Instance, Vec<String>) {
    let inst = Instance::new();
    for (name, kind) in feeds {
        inst.ok(&["feed", "create", name, "--type", kind]);
    }
    let tokens = scopes
        .iter()
        .map(|scope| {
            inst.ok(&["token", "create", "--scope", scope])
                .trim()
                .to_owned()
        })
        .collect();
    std::fs::write(
        inst.data().join("cairn.toml"),
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_upload_mib = 1\n",
    )
    .unwrap();
    (inst, tokens)
}

#[test]
fn twine_uploads_and_pip_installs_a_wheel_and_an_sdist_with_a_dependency() {
    let (inst, tokens) = instance_with(
        &[("pypi", "pypi"), ("other", "pypi")],
        &["publish:pypi", "publish:other", "admin"],
    );
    let (token, other_token, admin) = (&tokens[0], &tokens[1], &tokens[2]);
    let (wheel, sdist) = build_python_packages(&inst);

    let server = Server::start(&inst);
    let upload_url = format!("{}/feeds/pypi/legacy/", server.http);

    // Refused: a bad token, a token for another feed, no token.
    assert!(!twine_upload(&upload_url, "cairn_nope", &wheel)
        .status
        .success());
    assert!(!twine_upload(&upload_url, other_token, &wheel)
        .status
        .success());
    for (auth, want, says) in [
        ("", 401, "needs a token"),
        ("Authorization: Bearer cairn_nope\r\n", 401, "not valid"),
        (
            &format!("Authorization: {other_token}\r\n") as &str,
            403,
            "does not allow publishing",
        ),
    ] {
        let (status, body) = http(
            &server.http,
            &format!("POST /feeds/pypi/legacy/ HTTP/1.1\r\nHost: HOST\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(status, want, "{body}");
        assert!(body.contains(says), "{body}");
    }
    assert_eq!(projects(&server.http), Vec::<String>::new());

    // Published, then installed by pip from the simple index: the wheel's dependency is the
    // sdist, which pip builds.
    run(python(&[
        "-m",
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        &upload_url,
        "-u",
        "__token__",
        "-p",
        token,
    ])
    .arg(&wheel)
    .arg(&sdist));
    assert_eq!(projects(&server.http), ["cairn-alpha", "cairn-beta"]);

    {
        let target = inst.path("site");
        let mut pip = python(&[
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-cache-dir",
            "--index-url",
            &format!("{}/feeds/pypi/simple/", server.http),
            "--target",
        ]);
        pip.arg(&target).arg("cairn-beta==2.0.0");
        let out = run(&mut pip);
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(log.contains("Successfully installed"), "{log}");
        let check = run(
            python(&["-c", "import cairn_beta; print(cairn_beta.VALUE)"])
                .env("PYTHONPATH", &target),
        );
        assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "42");
    }
    // uv too (it reads the JSON API and builds the sdist with the machine's setuptools).
    {
        let target = inst.path("site-uv");
        run(Command::new("uv")
            .args([
                "pip",
                "install",
                "--no-cache",
                "--no-build-isolation",
                "--python",
                "python3",
                "--index-url",
            ])
            .arg(format!("{}/feeds/pypi/simple/", server.http))
            .arg("--target")
            .arg(&target)
            .arg("cairn-beta==2.0.0")
            .env_remove("PIP_FIND_LINKS")
            .env_remove("UV_INDEX_URL")
            .env_remove("UV_EXTRA_INDEX_URL")
            .env_remove("UV_FIND_LINKS"));
        let check = run(
            python(&["-c", "import cairn_beta; print(cairn_beta.VALUE)"])
                .env("PYTHONPATH", &target),
        );
        assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "42");
    }

    // The JSON and HTML indexes carry what pip needs.
    let (status, page) = http(
        &server.http,
        "GET /feeds/pypi/simple/cairn-beta/ HTTP/1.1\r\nHost: HOST\r\nAccept: application/vnd.pypi.simple.v1+json\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("\"requires-python\":\">=3.7\""), "{page}");
    assert!(page.contains("\"core-metadata\":{\"sha256\""), "{page}");
    let (status, page) = http(
        &server.http,
        "GET /feeds/pypi/simple/cairn-alpha/ HTTP/1.1\r\nHost: HOST\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(
            "<a href=\"/feeds/pypi/files/cairn-alpha/1.0.0/cairn_alpha-1.0.0.tar.gz#sha256="
        ),
        "{page}"
    );
    // PEP 592: yanked through the admin API, the index says so and why.
    let body = r#"{"name":"cairn-alpha","version":"1.0.0","reason":"broken build"}"#;
    let (status, text) = raw_http(
        &server.http,
        &format!("POST /api/v1/feeds/pypi/yank HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    let (_, page) = http(
        &server.http,
        "GET /feeds/pypi/simple/cairn-alpha/ HTTP/1.1\r\nHost: HOST\r\nAccept: application/vnd.pypi.simple.v1+json\r\nConnection: close\r\n\r\n",
    );
    assert!(page.contains("\"yanked\":\"broken build\""), "{page}");
    let (status, page) = http(
        &server.http,
        "GET /feeds/pypi/simple/Cairn_Beta/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 308, "a non-normalized name redirects: {page}");
    assert!(
        page.contains("location: /feeds/pypi/simple/cairn-beta/"),
        "{page}"
    );

    // Bad input: each a clear 4xx, the store unchanged.
    drop(server);
    let before = inst.root("pypi");
    let server = Server::start(&inst);
    for (request, want, says) in [
        (
            "GET /feeds/pypi/files/..%2f..%2fetc/1.0/passwd HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            400,
            "must not contain `..`",
        ),
        (
            "GET /feeds/pypi/files/cairn-beta/2.0.0/..%5cx HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            400,
            "must not contain",
        ),
        (
            "GET /feeds/pypi/files/cairn-beta/%2fetc%2fpasswd HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            404,
            "no such PyPI resource",
        ),
        (
            "GET /feeds/..%2fpypi/simple/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            400,
            "feed name",
        ),
        (
            "GET /feeds/pypi/files/cairn-beta/9.9/x.whl HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            404,
            "not in feed",
        ),
    ] {
        let (status, body) = http(&server.http, request);
        assert_eq!(status, want, "{request}\n{body}");
        assert!(body.contains(says), "{request}\n{body}");
    }
    // A file whose bytes do not match the declared sha256.
    let upload = |fields: &[(&str, &str)], file: Option<(&str, &[u8])>, cut: usize| {
        let boundary = "cairnboundary";
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        }
        if let Some((name, data)) = file {
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        // A cut multipart body: the HTTP body is whole, the multipart in it ends early.
        body.truncate(body.len() - cut);
        let len = body.len();
        let auth = base64_basic(token);
        let head = format!("POST /feeds/pypi/legacy/ HTTP/1.1\r\nHost: HOST\r\nAuthorization: Basic {auth}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
        raw_http(&server.http, &head, &body)
    };
    let wheel_bytes = std::fs::read(&wheel).unwrap();
    let (status, body) = upload(
        &[
            (":action", "file_upload"),
            ("name", "cairn-beta"),
            ("version", "2.0.0"),
            ("sha256_digest", &"0".repeat(64)),
        ],
        Some(("cairn_beta-2.0.0-py3-none-any.whl", &wheel_bytes)),
        0,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("does not match its sha256_digest"), "{body}");
    // A multipart body cut short.
    let (status, body) = upload(
        &[
            (":action", "file_upload"),
            ("name", "cairn-beta"),
            ("version", "2.0.0"),
        ],
        Some(("cairn_beta-2.0.0-py3-none-any.whl", &wheel_bytes)),
        200,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("malformed or cut short"), "{body}");
    // Not a zip at all.
    let (status, body) = upload(
        &[
            (":action", "file_upload"),
            ("name", "cairn-delta"),
            ("version", "1.0"),
        ],
        Some(("cairn_delta-1.0-py3-none-any.whl", b"not a zip")),
        0,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a readable archive"), "{body}");
    // Larger than the configured limit (1 MiB).
    let big = vec![7u8; 1_200_000];
    let (status, body) = upload(
        &[
            (":action", "file_upload"),
            ("name", "cairn-big"),
            ("version", "1.0"),
        ],
        Some(("cairn_big-1.0-py3-none-any.whl", &big)),
        0,
    );
    assert_eq!(status, 413, "{body}");
    // The same name with another spelling, same version, other bytes: a conflict.
    let (status, body) = upload(
        &[
            (":action", "file_upload"),
            ("name", "cairn.beta"),
            ("version", "2.0.0"),
        ],
        Some((
            "cairn_beta-2.0.0-py3-none-any.whl",
            &[wheel_bytes.as_slice(), b"x"].concat(),
        )),
        0,
    );
    assert!(status == 400 || status == 409, "{status} {body}");
    drop(server);
    assert_eq!(inst.root("pypi"), before, "bad uploads changed the feed");
    assert!(inst.ok(&["verify"]).contains(": ok"));
}

pub(crate) fn base64_basic(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("__token__:{token}"))
}

/// The body of a response as bytes (after the blank line), and the status.
pub(crate) fn http_bytes(addr: &str, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let host = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let _ = s.write_all(head.replace("HOST", host).as_bytes());
    let _ = s.write_all(body);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 4);
    let status = String::from_utf8_lossy(&bytes[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, bytes[split..].to_vec())
}

#[test]
fn raw_files_put_get_range_delete_and_a_tampered_blob_is_never_served() {
    let (inst, tokens) = instance_with(&[("files", "raw")], &["publish:files"]);
    let token = &tokens[0];
    let data = crate::util::bytes(7, 300_000);
    let server = Server::start(&inst);
    let put = |path: &str, auth: &str, body: &[u8]| {
        http(
            &server.http,
            &format!(
                "PUT /feeds/files/{path} HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                String::from_utf8_lossy(body)
            ),
        )
    };
    let bearer = format!("Authorization: Bearer {token}\r\n");
    // Binary bodies go through raw_http.
    let put_bytes = |path: &str, body: &[u8]| {
        raw_http(
            &server.http,
            &format!(
                "PUT /feeds/files/{path} HTTP/1.1\r\nHost: HOST\r\n{bearer}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        )
    };
    assert_eq!(put("tool/1.0/t.bin", "", b"x").0, 401);
    let (status, body) = put("..%2fx/1.0/t.bin", &bearer, b"x");
    assert_eq!(status, 400, "{body}");
    assert_eq!(put_bytes("tool/1.0/t.bin", &data).0, 201);
    assert_eq!(
        put_bytes("tool/1.0/t.bin", &data).0,
        200,
        "same bytes again"
    );
    let (status, body) = put_bytes("tool/1.0/t.bin", b"other bytes");
    assert_eq!(status, 409, "{body}");
    let (status, body) = put_bytes("tool/2.0/big.bin", &vec![1u8; 1_100_000]);
    assert_eq!(status, 413, "{body}");
    // A body that stops short of its Content-Length (the client goes away): nothing stored.
    {
        use std::io::{Read, Write};
        let host = server.http.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(
            s,
            "PUT /feeds/files/cut/1.0/c.bin HTTP/1.1\r\nHost: {host}\r\n{bearer}Content-Length: 300000\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s.write_all(&crate::util::bytes(8, 100_000)).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
        let (status, _) = http(
            &server.http,
            "GET /feeds/files/cut/1.0/c.bin HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 404);
    }

    let get = |range: &str| {
        http_bytes(
            &server.http,
            &format!("GET /feeds/files/tool/1.0/t.bin HTTP/1.1\r\nHost: HOST\r\n{range}Connection: close\r\n\r\n"),
            b"",
        )
    };
    assert_eq!(get(""), (200, data.clone()));
    assert_eq!(
        get("Range: bytes=100000-100009\r\n"),
        (206, data[100_000..100_010].to_vec())
    );
    assert_eq!(
        get("Range: bytes=-5\r\n"),
        (206, data[data.len() - 5..].to_vec())
    );
    assert_eq!(get("Range: bytes=300000-\r\n").0, 416);
    let (status, head) = http(
        &server.http,
        "HEAD /feeds/files/tool/1.0/t.bin HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(head.contains("content-length: 300000"), "{head}");
    let (status, list) = http(
        &server.http,
        "GET /feeds/files/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(list.contains("\"name\":\"t.bin\""), "{list}");
    drop(server);

    // Damage the blob on disk: at its start, a clear 500 and no byte; further in, the bytes
    // before the damaged chunk group and then a cut, never a damaged byte.
    let blob = crate::util::listing(&inst.data().join("blobs"))
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .find(|p| !p.ends_with(".obao"))
        .unwrap();
    let original = std::fs::read(&blob).unwrap();
    for (offset, whole_groups) in [(10usize, 0usize), (200_000, 12)] {
        let mut damaged = original.clone();
        damaged[offset] ^= 0xff;
        std::fs::write(&blob, &damaged).unwrap();
        let server = Server::start(&inst);
        let (status, body) = http_bytes(
            &server.http,
            "GET /feeds/files/tool/1.0/t.bin HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            b"",
        );
        // A blob of this size is read and verified whole before a whole download is
        // answered: wherever the damage is, the client gets a 500 that names it.
        assert_eq!(status, 500);
        assert!(String::from_utf8_lossy(&body).contains("failed verification"));
        // A ranged download streams group by group.
        let (status, body) = http_bytes(
            &server.http,
            "GET /feeds/files/tool/1.0/t.bin HTTP/1.1\r\nHost: HOST\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n",
            b"",
        );
        if whole_groups == 0 {
            assert_eq!(status, 500);
            assert!(String::from_utf8_lossy(&body).contains("failed verification"));
        } else {
            // The response is cut once the damaged group is reached; if that happens before
            // the headers left the server's buffer the client sees the connection close.
            assert!(status == 206 || status == 0, "{status}");
            assert!(body.len() < data.len(), "a damaged blob was sent whole");
            assert!(body.len() <= offset, "bytes past the damage were sent");
            assert_eq!(
                body,
                data[..body.len()],
                "sent bytes differ from the original"
            );
        }
        drop(server);
    }
    std::fs::write(&blob, &original).unwrap();
    let server = Server::start(&inst);
    let (status, _) = http(
        &server.http,
        &format!("DELETE /feeds/files/tool/1.0/t.bin HTTP/1.1\r\nHost: HOST\r\n{bearer}Connection: close\r\n\r\n"),
    );
    assert_eq!(status, 204);
    let (status, _) = http(
        &server.http,
        "GET /feeds/files/tool/1.0/t.bin HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
}

/// A wheel and an sdist stored with `cairn push` are listed in the simple index (both forms)
/// exactly as a `twine upload` of the same files lists them, core metadata (PEP 658) included.
#[test]
fn pypi_files_pushed_with_the_cli_are_indexed_as_twine_uploads_index_them() {
    let (inst, tokens) = instance_with(&[("pypi", "pypi"), ("other", "pypi")], &["publish:pypi"]);
    let (wheel, sdist) = build_python_packages(&inst);
    let server = Server::start(&inst);
    let upload = format!("{}/feeds/pypi/legacy/", server.http);
    for file in [&wheel, &sdist] {
        assert!(twine_upload(&upload, &tokens[0], file).status.success());
    }
    server.stop();
    inst.ok(&[
        "push",
        "other",
        wheel.to_str().unwrap(),
        sdist.to_str().unwrap(),
    ]);
    let server = Server::start(&inst);
    let page = |feed: &str, project: &str, accept: &str| {
        let (status, body) = http_bytes(
            &server.http,
            &format!("GET /feeds/{feed}/simple/{project}/ HTTP/1.1\r\nHost: HOST\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(status, 200, "{feed} {project}");
        String::from_utf8_lossy(&body).replace(&format!("/feeds/{feed}/"), "/feeds/FEED/")
    };
    for project in ["cairn-alpha", "cairn-beta"] {
        for accept in ["application/vnd.pypi.simple.v1+json", "text/html"] {
            assert_eq!(
                page("other", project, accept),
                page("pypi", project, accept),
                "{project} {accept}"
            );
        }
    }
    let json: serde_json::Value = serde_json::from_str(&page(
        "other",
        "cairn-beta",
        "application/vnd.pypi.simple.v1+json",
    ))
    .unwrap();
    let file = &json["files"][0];
    assert!(file["core-metadata"].is_object(), "{json}");
    let url = file["url"].as_str().unwrap();
    let path = url[url.find("/feeds/").unwrap()..]
        .split('#')
        .next()
        .unwrap()
        .to_owned();
    let metadata = |feed: &str| {
        http_bytes(
            &server.http,
            &format!(
                "GET {}.metadata HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
                path.replace("/feeds/FEED/", &format!("/feeds/{feed}/"))
            ),
            b"",
        )
    };
    let pushed = metadata("other");
    assert_eq!(pushed.0, 200);
    assert_eq!(pushed, metadata("pypi"));
}

/// A `.crate` stored with `cairn push` is listed in the sparse index exactly as a `cargo
/// publish` of the same file lists it (dependencies of every kind, renamed, optional, for a
/// target, with features; features, `links`, `rust-version`), and cargo builds against it.
#[test]
fn a_crate_pushed_with_the_cli_is_indexed_as_cargo_publish_indexes_it() {
    let (inst, tokens) = instance_with(
        &[("crates", "cargo"), ("pushed", "cargo")],
        &["publish:crates"],
    );
    let server = Server::start(&inst);
    let home = inst.path("cargo-home");
    cargo_registry(&home, &server.http);
    let write_crate = |name: &str, toml: &str, files: &[(&str, &str)]| {
        let dir = inst.path(name);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), toml).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "pub fn answer() -> u32 { 42 }\n").unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    };
    let head = |name: &str, version: &str| {
        format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\ndescription = \"test\"\nlicense = \"MIT\"\n")
    };
    let crates = [
        ("dep-a", "0.1.3"),
        ("dep-b", "1.2.0"),
        ("dep-c", "0.3.1"),
        ("top", "0.2.0"),
    ];
    for (name, version) in &crates[..3] {
        let dir = write_crate(
            name,
            &format!("{}\n[features]\nextra = []\n", head(name, version)),
            &[],
        );
        run(&mut cargo_publish(&home, &dir, &tokens[0]));
    }
    let top = write_crate(
        "top",
        &format!(
            "{}rust-version = \"1.60\"\nlinks = \"top\"\nbuild = \"build.rs\"\n\n\
             [dependencies]\n\
             dep-a = {{ version = \"0.1\", registry = \"cairn\" }}\n\
             renamed = {{ package = \"dep-b\", version = \">= 1.1, < 2\", registry = \"cairn\", default-features = false, features = [\"extra\"], optional = true }}\n\n\
             [build-dependencies]\ndep-a = {{ version = \"=0.1.3\", registry = \"cairn\" }}\n\n\
             [dev-dependencies]\ndep-b = {{ version = \"1\", registry = \"cairn\" }}\n\n\
             [target.'cfg(unix)'.dependencies]\ndep-c = {{ version = \"~0.3\", registry = \"cairn\", features = [\"extra\"] }}\n\n\
             [features]\ndefault = [\"more\"]\nmore = [\"renamed/extra\"]\nplain = []\n",
            head("top", "0.2.0")
        ),
        &[("build.rs", "fn main() {}\n")],
    );
    run(&mut cargo_publish(&home, &top, &tokens[0]));
    // The very files cargo uploaded, pushed into the other feed with the command line.
    let mut files = Vec::new();
    for (name, version) in crates {
        let (status, bytes) = http_bytes(
            &server.http,
            &format!("GET /feeds/crates/api/v1/crates/{name}/{version}/download HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(status, 200);
        let path = inst.path(&format!("{name}-{version}.crate"));
        std::fs::write(&path, bytes).unwrap();
        files.push(path.to_str().unwrap().to_owned());
    }
    // A crate as crates.io serves them: its dependencies name no registry, so they resolve
    // in the registry that lists it.
    let solo_toml = "[package]\nedition = \"2021\"\nname = \"solo\"\nversion = \"0.1.0\"\ndescription = \"t\"\nlicense = \"MIT\"\n\n[dependencies.dep-a]\nversion = \"0.1\"\n";
    let solo = inst.path("solo-0.1.0.crate");
    std::fs::write(
        &solo,
        cairn_store::package::fixtures::tar_gz(&[
            ("solo-0.1.0/Cargo.toml", solo_toml.as_bytes()),
            (
                "solo-0.1.0/src/lib.rs",
                b"pub fn f() -> u32 { dep_a::answer() }\n",
            ),
        ]),
    )
    .unwrap();
    files.push(solo.to_str().unwrap().to_owned());
    let crates_index = format!("sparse+{}/feeds/crates/", server.http);
    server.stop();
    let mut args = vec!["push", "pushed"];
    args.extend(files.iter().map(String::as_str));
    inst.ok(&args);
    let server = Server::start(&inst);
    let index = |feed: &str, name: &str| -> serde_json::Value {
        let (status, body) = http_bytes(
            &server.http,
            &format!(
                "GET /feeds/{feed}/{} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
                cairn_feedserver::cargo::index_path(name)
            ),
            b"",
        );
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{feed} {name}: {body}");
        serde_json::from_str(body.trim()).unwrap()
    };
    for (name, _) in crates {
        // The files were packaged for the feed `crates`, so their dependencies name it; a
        // publish to that very feed leaves the registry out, a push elsewhere keeps it.
        let mut pushed = index("pushed", name);
        for dep in pushed["deps"].as_array_mut().unwrap() {
            let registry = dep.as_object_mut().unwrap().remove("registry");
            assert_eq!(registry, Some(serde_json::json!(crates_index)), "{name}");
        }
        assert_eq!(pushed, index("crates", name), "{name}");
    }
    let line = index("pushed", "top");
    assert_eq!(line["deps"].as_array().unwrap().len(), 5, "{line}");
    assert_eq!(line["links"], "top");
    assert_eq!(line["rust_version"], "1.60");
    let line = index("pushed", "solo");
    assert_eq!(line["deps"][0]["name"], "dep-a");
    assert_eq!(line["deps"][0]["req"], "^0.1");
    assert!(line["deps"][0].get("registry").is_none(), "{line}");

    // cargo resolves and builds `solo` and its dependency from the pushed feed alone.
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[registries.pushed]\nindex = \"sparse+{}/feeds/pushed/\"\n",
            server.http
        ),
    )
    .unwrap();
    let app = inst.path("app");
    assert_eq!(
        cargo_app_prints(&home, &app, "solo", "0.1", "pushed", "solo::f()"),
        "42"
    );
}

/// Builds and runs, with cargo, a program in `dir` that depends on `krate` `req` from
/// `registry` and prints `expr`; what it printed.
pub(crate) fn cargo_app_prints(
    home: &Path,
    dir: &Path,
    krate: &str,
    req: &str,
    registry: &str,
    expr: &str,
) -> String {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{krate} = {{ version = \"{req}\", registry = \"{registry}\" }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        format!("fn main() {{ println!(\"{{}}\", {expr}); }}\n"),
    )
    .unwrap();
    let out = run(&mut cargo(home, dir, &["run", "--quiet"]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A `cargo` command with its own home (registry configuration, caches) and target dir.
pub(crate) fn cargo(home: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args)
        .current_dir(dir)
        .env("CARGO_HOME", home)
        .env("CARGO_TARGET_DIR", home.join("target"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_TERM_COLOR", "never");
    c
}

#[test]
fn cargo_publishes_yanks_and_builds_through_the_sparse_registry() {
    let (inst, tokens) = instance_with(&[("crates", "cargo")], &["publish:crates", "read:crates"]);
    let (token, reader) = (&tokens[0], &tokens[1]);
    let server = Server::start(&inst);
    let home = inst.path("cargo-home");
    cargo_registry(&home, &server.http);
    let dep = inst.path("cairn-dep");
    std::fs::create_dir_all(dep.join("src")).unwrap();
    std::fs::write(
        dep.join("Cargo.toml"),
        "[package]\nname = \"cairn-dep\"\nversion = \"0.1.0\"\nedition = \"2021\"\ndescription = \"test\"\nlicense = \"MIT\"\n\n[dependencies]\n",
    )
    .unwrap();
    std::fs::write(dep.join("src/lib.rs"), "pub fn answer() -> u32 { 42 }\n").unwrap();
    // A token without the publish scope is refused; the right one publishes.
    let out = cargo_publish(&home, &dep, reader).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not allow publishing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(&mut cargo_publish(&home, &dep, token));

    let app = inst.path("app");
    assert_eq!(
        cargo_app_prints(
            &home,
            &app,
            "cairn-dep",
            "0.1",
            "cairn",
            "cairn_dep::answer()"
        ),
        "42"
    );

    // Yank and unyank show in the index.
    let index = || {
        http(
            &server.http,
            "GET /feeds/crates/ca/ir/cairn-dep HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
        )
    };
    let (status, body) = index();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"yanked\":false") && body.contains("\"cksum\":\""),
        "{body}"
    );
    run(cargo(
        &home,
        &dep,
        &[
            "yank",
            "--registry",
            "cairn",
            "--version",
            "0.1.0",
            "cairn-dep",
        ],
    )
    .env("CARGO_REGISTRIES_CAIRN_TOKEN", token));
    assert!(index().1.contains("\"yanked\":true"));
    run(cargo(
        &home,
        &dep,
        &[
            "yank",
            "--undo",
            "--registry",
            "cairn",
            "--version",
            "0.1.0",
            "cairn-dep",
        ],
    )
    .env("CARGO_REGISTRIES_CAIRN_TOKEN", token));
    assert!(index().1.contains("\"yanked\":false"));

    // A publish body whose length prefix promises more than it holds, and one whose .crate
    // is not gzip: 400, nothing stored.
    let auth = format!("Authorization: {token}\r\n");
    for (body, says) in [
        (
            [&100u32.to_le_bytes()[..], b"{}"].concat(),
            "declares 100 bytes",
        ),
        (
            [
                &25u32.to_le_bytes()[..],
                br#"{"name":"x","vers":"1.0"}"#,
                &4u32.to_le_bytes()[..],
                b"nope",
            ]
            .concat(),
            "not gzip",
        ),
    ] {
        let (status, text) = raw_http(
            &server.http,
            &format!(
                "PUT /feeds/crates/api/v1/crates/new HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            &body,
        );
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let (status, _) = http(
        &server.http,
        "GET /feeds/crates/1/x HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
}

/// An `npm` command with its own user config (registry and token) and cache.
pub(crate) fn npm(home: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("npm");
    c.args(args)
        .current_dir(dir)
        .env("npm_config_userconfig", home.join("npmrc"))
        .env("npm_config_cache", home.join("cache"))
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_update_notifier", "false");
    c
}

/// Points an npm home (the `home` of [`npm`]) at the feed `npm` of the server at `http`,
/// publishing with `token`.
pub(crate) fn npm_registry(home: &Path, http: &str, token: &str) {
    std::fs::create_dir_all(home).unwrap();
    let host = http.trim_start_matches("http://");
    std::fs::write(
        home.join("npmrc"),
        format!("registry={http}/feeds/npm/\n//{host}/feeds/npm/:_authToken={token}\n"),
    )
    .unwrap();
}

/// `cargo publish` to registry `cairn` with `token`.
pub(crate) fn cargo_publish(home: &Path, dir: &Path, token: &str) -> Command {
    let mut c = cargo(
        home,
        dir,
        &[
            "publish",
            "--registry",
            "cairn",
            "--no-verify",
            "--allow-dirty",
        ],
    );
    c.env("CARGO_REGISTRIES_CAIRN_TOKEN", token);
    c
}

/// Points a cargo home (the `home` of [`cargo`]) at the feed `crates` of the server at
/// `http` as registry `cairn`; the machine's own cargo configuration (offline mirrors,
/// vendoring) stays out.
pub(crate) fn cargo_registry(home: &Path, http: &str) {
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!("[registries.cairn]\nindex = \"sparse+{http}/feeds/crates/\"\n"),
    )
    .unwrap();
}

/// Writes an npm package into `dir` and publishes it with `npm publish` (registry and token
/// from `home`, see [`npm_registry`]).
pub(crate) fn publish_npm(home: &Path, dir: &Path, package_json: &str, index_js: &str) {
    write_package(dir, package_json, index_js);
    run(&mut npm(home, dir, &["publish", "--access", "public"]));
}

/// Writes the library crate `name` `version` (its `lib.rs` is `lib_rs`) into `dir` and
/// publishes it with `cargo publish` to registry `cairn` (see [`cargo_registry`]).
pub(crate) fn publish_crate(
    home: &Path,
    dir: &Path,
    name: &str,
    version: &str,
    lib_rs: &str,
    token: &str,
) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\ndescription = \"t\"\nlicense = \"MIT\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib_rs).unwrap();
    run(&mut cargo_publish(home, dir, token));
}

pub(crate) fn write_package(dir: &Path, package_json: &str, index_js: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("package.json"), package_json).unwrap();
    std::fs::write(dir.join("index.js"), index_js).unwrap();
}

#[test]
fn npm_publishes_scoped_and_unscoped_packages_and_installs_a_dependent() {
    let (inst, tokens) = instance_with(&[("npm", "npm")], &["publish:npm"]);
    let token = &tokens[0];
    let server = Server::start(&inst);
    let home = inst.path("npm-home");
    npm_registry(&home, &server.http, token);
    let left = inst.path("left");
    write_package(
        &left,
        r#"{"name":"cairn-left","version":"1.0.0","main":"index.js"}"#,
        "module.exports = 'left';\n",
    );
    let right = inst.path("right");
    write_package(
        &right,
        r#"{"name":"@cairn/right","version":"1.0.0","main":"index.js"}"#,
        "module.exports = 'right';\n",
    );
    let both = inst.path("both");
    write_package(
        &both,
        r#"{"name":"cairn-both","version":"2.0.0","main":"index.js","dependencies":{"cairn-left":"^1.0.0","@cairn/right":"^1.0.0"}}"#,
        "module.exports = require('cairn-left') + ' ' + require('@cairn/right');\n",
    );
    for dir in [&left, &right, &both] {
        run(&mut npm(&home, dir, &["publish", "--access", "public"]));
    }
    let app = inst.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(&mut npm(&home, &app, &["install", "cairn-both"]));
    let out = run(Command::new("node")
        .args(["-e", "console.log(require('cairn-both'))"])
        .current_dir(&app));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "left right");

    // A second version, a dist-tag, and unpublishing that version.
    write_package(
        &left,
        r#"{"name":"cairn-left","version":"1.1.0","main":"index.js"}"#,
        "module.exports = 'left 1.1';\n",
    );
    run(&mut npm(&home, &left, &["publish"]));
    run(&mut npm(
        &home,
        &left,
        &["dist-tag", "add", "cairn-left@1.0.0", "stable"],
    ));
    let tags = run(&mut npm(&home, &left, &["dist-tag", "ls", "cairn-left"]));
    let tags = String::from_utf8_lossy(&tags.stdout).into_owned();
    assert!(
        tags.contains("latest: 1.1.0") && tags.contains("stable: 1.0.0"),
        "{tags}"
    );
    run(&mut npm(&home, &left, &["unpublish", "cairn-left@1.1.0"]));
    let (status, page) = http(
        &server.http,
        "GET /feeds/npm/cairn-left HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("\"1.1.0\""), "{page}");
    assert!(page.contains("\"latest\":\"1.0.0\""), "{page}");
    let (status, page) = http(
        &server.http,
        "GET /feeds/npm/@cairn%2fright HTTP/1.1\r\nHost: HOST\r\nAccept: application/vnd.npm.install-v1+json\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("\"integrity\":\"sha512-"), "{page}");

    // A publish whose attachment does not match its integrity, and one whose tarball is not
    // gzip: 400, nothing stored.
    let tgz = cairn_store::package::fixtures::npm_tarball("cairn-bad", "1.0.0");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for (data, integrity, says) in [
        (
            b64(&tgz),
            "sha512-AAAA",
            "does not match its dist.integrity",
        ),
        (b64(b"not gzip at all"), "", "not gzip"),
    ] {
        let body = format!(
            r#"{{"name":"cairn-bad","versions":{{"1.0.0":{{"name":"cairn-bad","version":"1.0.0","dist":{{"integrity":"{integrity}"}}}}}},"dist-tags":{{"latest":"1.0.0"}},"_attachments":{{"cairn-bad-1.0.0.tgz":{{"data":"{data}"}}}}}}"#
        );
        let (status, text) = raw_http(
            &server.http,
            &format!(
                "PUT /feeds/npm/cairn-bad HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        );
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let (status, _) = http(
        &server.http,
        "GET /feeds/npm/cairn-bad HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
}

/// Runs the spoke's replication from the hub; every feed must converge.
fn converged(spoke: &Instance) {
    let r: serde_json::Value =
        serde_json::from_str(&spoke.ok(&["replicate", "from-hub", "--json"])).unwrap();
    for f in r["feeds"].as_array().unwrap() {
        assert_eq!(f["converged"], true, "{r}");
    }
}

pub(crate) fn pip_install(index: &str, target: &Path, spec: &str) -> Output {
    python(&[
        "-m",
        "pip",
        "install",
        "--no-build-isolation",
        "--no-cache-dir",
        "--index-url",
        index,
        "--target",
    ])
    .arg(target)
    .arg(spec)
    .output()
    .unwrap()
}

/// A hub and a spoke that pulls `feeds` (each created on both with its type) and `@system`
/// from it on demand; returns them with a publish token and an admin token of the hub.
fn hub_and_spoke(feeds: &[(&str, &str)]) -> (Instance, Instance, String, String) {
    let hub = Instance::new();
    let spoke = Instance::new();
    for inst in [&hub, &spoke] {
        for (name, kind) in feeds {
            inst.ok(&["feed", "create", name, "--type", kind]);
        }
    }
    let token = |scopes: &[&str]| hub.token(scopes);
    let publish = token(&["publish:*"]);
    let admin = token(&["admin"]);
    let replicate = token(&["replicate:*"]);
    let port = crate::util::free_udp_port();
    crate::util::peer_spoke_with_hub(&hub, &spoke, "spoke", port);
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let names: Vec<String> = feeds.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    std::fs::write(
        spoke.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [{}, \"@system\"]\nmode = \"pull\"\ninterval_secs = 0\n", names.join(", ")),
    )
    .unwrap();
    (hub, spoke, publish, admin)
}

#[test]
fn a_spoke_serves_what_the_hub_has_and_a_block_made_on_the_hub_holds_on_both() {
    let (hub, spoke, publish, _) = hub_and_spoke(&[("pypi", "pypi")]);
    let (wheel, sdist) = build_python_packages(&hub);

    let hub_server = Server::start(&hub);
    run(python(&[
        "-m",
        "twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        &format!("{}/feeds/pypi/legacy/", hub_server.http),
        "-u",
        "__token__",
        "-p",
        &publish,
    ])
    .arg(&wheel)
    .arg(&sdist));
    let spoke_publish = spoke
        .ok(&["token", "create", "--scope", "publish:pypi"])
        .trim()
        .to_owned();
    let spoke_server = Server::start(&spoke);
    converged(&spoke);

    // The same install from each site; the spoke is read-only and says where to publish.
    for (site, server) in [("hub", &hub_server), ("spoke", &spoke_server)] {
        let out = pip_install(
            &format!("{}/feeds/pypi/simple/", server.http),
            &hub.path(&format!("site-{site}")),
            "cairn-beta==2.0.0",
        );
        assert!(out.status.success(), "{site}: {out:?}");
    }
    let out = twine_upload(
        &format!("{}/feeds/pypi/legacy/", spoke_server.http),
        &publish,
        &wheel,
    );
    assert!(!out.status.success());
    let (status, body) = http(
        &spoke_server.http,
        &format!("POST /feeds/pypi/legacy/ HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {spoke_publish}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("is a pull replica of `hub`; publish to `hub`"),
        "{body}"
    );

    // Security staff block cairn-alpha on the running hub.
    hub.block(
        r#"{"id":"CAIRN-2026-0001","modified":"2026-11-01T00:00:00Z","summary":"test","affected":[{"package":{"ecosystem":"PyPI","name":"cairn_alpha"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"1.1"}]}]}]}"#,
        &["--comment", "remote code execution", "--author", "security"],
    );
    converged(&spoke);
    for (site, server) in [("hub", &hub_server), ("spoke", &spoke_server)] {
        let (status, body) = http(
            &server.http,
            "GET /feeds/pypi/files/cairn-alpha/1.0.0/cairn_alpha-1.0.0.tar.gz HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 403, "{site}: {body}");
        assert!(
            body.contains("CAIRN-2026-0001") && body.contains("remote code execution"),
            "{site}: {body}"
        );
        let out = pip_install(
            &format!("{}/feeds/pypi/simple/", server.http),
            &hub.path(&format!("blocked-{site}")),
            "cairn-beta==2.0.0",
        );
        assert!(
            !out.status.success(),
            "{site}: pip installed a blocked dependency"
        );
        // The index says why.
        let (_, page) = http(
            &server.http,
            "GET /feeds/pypi/simple/cairn-alpha/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
        );
        assert!(
            page.contains("data-yanked=\"blocked: CAIRN-2026-0001"),
            "{site}: {page}"
        );
    }
}

/// The JSON body of a response.
fn json_body(text: &str) -> serde_json::Value {
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_admin_api_manages_feeds_vulnerabilities_and_assessments() {
    let (inst, tokens) = instance_with(&[], &["admin", "read:*"]);
    let (admin, reader) = (&tokens[0], &tokens[1]);
    let server = Server::start(&inst);
    let call = |method: &str, path: &str, token: &str, body: &str| {
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        raw_http(
            &server.http,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        )
    };
    let (status, text) = call("GET", "/api/v1/instance", "", "");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        json_body(&text)["key"],
        inst.ok(&["key", "show"]).trim(),
        "{text}"
    );
    assert_eq!(call("GET", "/api/v1/feeds", "", "").0, 401);
    assert_eq!(call("GET", "/api/v1/feeds", reader, "").0, 403);
    let (status, text) = call(
        "POST",
        "/api/v1/feeds",
        admin,
        r#"{"name":"py","type":"pypi"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = call("GET", "/api/v1/feeds", admin, "");
    assert_eq!(status, 200, "{text}");
    assert!(
        json_body(&text)
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "py" && f["type"] == "pypi" && f["entries"] == 0),
        "{text}"
    );
    let (status, text) = call(
        "POST",
        "/api/v1/vulnerabilities",
        admin,
        r#"{"id":"CAIRN-2026-0002","modified":"2026-11-02T00:00:00Z","affected":[{"package":{"ecosystem":"PyPI","name":"x"},"versions":["1.0"]}]}"#,
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = call(
        "POST",
        "/api/v1/assessments",
        admin,
        r#"{"vulnerability":"CAIRN-2026-0002","type":"Nope"}"#,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("no assessment type `Nope`"), "{text}");
    let (status, text) = call(
        "POST",
        "/api/v1/assessments",
        admin,
        r#"{"vulnerability":"CAIRN-2026-0002","type":"Caution","comment":"watching","author":"sec"}"#,
    );
    assert_eq!(status, 200, "{text}");
    let id = json_body(&text)["id"].as_str().unwrap().to_owned();
    let (_, text) = call("GET", "/api/v1/assessments", admin, "");
    assert!(text.contains(&id) && text.contains("watching"), "{text}");
    let (_, text) = call("GET", "/api/v1/assessment-types", admin, "");
    assert!(text.contains("\"Blocked\""), "{text}");
    let (status, _) = call("DELETE", &format!("/api/v1/assessments/{id}"), admin, "");
    assert_eq!(status, 200);
    let (_, text) = call("GET", "/api/v1/assessments", admin, "");
    assert_eq!(json_body(&text), serde_json::json!([]));
    // PEP 592: a yanked version stays installable when pinned and says why in the index.
    let (status, text) = call(
        "POST",
        "/api/v1/feeds/py/yank",
        admin,
        r#"{"name":"x","version":"1.0","reason":"broken"}"#,
    );
    assert_eq!(status, 404, "no such version yet: {text}");
    let (status, text) = call("GET", "/metrics", "", "");
    assert_eq!(status, 200);
    assert!(text.contains("cairn_http_requests_total"), "{text}");
    assert!(
        text.contains("cairn_http_errors_total 4"),
        "401, 403, 400 and 404 so far: {text}"
    );
}

#[test]
fn the_admin_api_does_what_the_command_line_does() {
    let (inst, tokens) = instance_with(&[("js", "npm"), ("bin", "raw")], &["admin"]);
    let admin = &tokens[0];
    let server = Server::start(&inst);
    let call = |method: &str, path: &str, body: &[u8]| {
        raw_http(
            &server.http,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {admin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        )
    };
    // Push: name and version from the npm tarball itself, as `cairn push` reads them.
    let tgz = cairn_store::package::fixtures::npm_tarball("cairn-api", "1.2.3");
    let (status, text) = call("POST", "/api/v1/feeds/js/files/cairn-api-1.2.3.tgz", &tgz);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("published cairn-api 1.2.3 (1 file)"),
        "{text}"
    );
    let (status, text) = call(
        "POST",
        "/api/v1/feeds/bin/files/tool.bin?name=tool&version=2",
        b"raw bytes",
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = call(
        "POST",
        "/api/v1/feeds/bin/files/..%2Fx?name=t&version=1",
        b"x",
    );
    assert!(status == 400 || status == 404, "{text}");
    let (status, text) = call("POST", "/api/v1/feeds/bin/files/plain.bin", b"x");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("cannot tell the name and version"), "{text}");
    // The API's entries are `cairn ls --json`'s.
    let (status, text) = call("GET", "/api/v1/feeds/js/entries", b"");
    assert_eq!(status, 200, "{text}");
    let listed: serde_json::Value =
        serde_json::from_str(&inst.ok(&["ls", "js", "--json"])).unwrap();
    assert_eq!(json_body(&text), listed);
    assert_eq!(listed[0]["name"], "cairn-api");
    // Root, delete a version, gc, verify.
    let (_, text) = call("GET", "/api/v1/feeds/bin", b"");
    assert_eq!(json_body(&text)["count"], 1, "{text}");
    assert_eq!(json_body(&text)["root"], inst.root("bin")["root"], "{text}");
    let (status, text) = call("DELETE", "/api/v1/feeds/bin/versions/tool/2", b"");
    assert_eq!(status, 200, "{text}");
    let (status, text) = call("POST", "/api/v1/gc", b"");
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_body(&text)["blobs_removed"], 1, "{text}");
    let (status, text) = call("POST", "/api/v1/verify", b"");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        json_body(&text)["problems"],
        serde_json::json!([]),
        "{text}"
    );
    // A replication this server does not have.
    let (status, text) = call("POST", "/api/v1/replications/nope/run", b"{}");
    assert_eq!(status, 200, "{text}");
    assert!(json_body(&text)["error"]
        .as_str()
        .unwrap_or("")
        .contains("nope"));
    // Removing a feed.
    let (status, text) = call("DELETE", "/api/v1/feeds/bin", b"");
    assert_eq!(status, 200, "{text}");
    assert!(!inst.ok(&["feed", "list"]).contains("bin"));
}

#[test]
fn an_npm_tarball_pushed_with_the_cli_lists_as_npm_publish_lists_it() {
    let (inst, tokens) = instance_with(&[("npm", "npm"), ("pushed", "npm")], &["publish:*"]);
    let server = Server::start(&inst);
    let home = inst.path("npm-home");
    npm_registry(&home, &server.http, &tokens[0]);
    let pkg = inst.path("pkg");
    for version in ["1.0.0", "1.1.0"] {
        write_package(
            &pkg,
            &format!(
                r#"{{"name":"@cairn/same","version":"{version}","main":"index.js","description":"one package two ways","license":"MIT","dependencies":{{"left-pad":"^1.3.0"}},"bin":{{"same":"index.js"}}}}"#
            ),
            "module.exports = 1;\n",
        );
        // The same tarball npm would publish, pushed with the CLI to the running server...
        let out = run(&mut npm(&home, &pkg, &["pack", "--pack-destination", ".."]));
        let tgz = inst.path(String::from_utf8_lossy(&out.stdout).trim());
        inst.ok(&["push", "pushed", tgz.to_str().unwrap()]);
        // ... and published with npm.
        run(&mut npm(&home, &pkg, &["publish", "--access", "public"]));
    }
    let packument = |feed: &str, accept: &str| {
        let (status, text) = http(
            &server.http,
            &format!("GET /feeds/{feed}/@cairn%2fsame HTTP/1.1\r\nHost: HOST\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 200, "{text}");
        // The tarball URLs name the feed; everything else must be the same.
        json_body(&text.replace("/feeds/pushed/", "/feeds/npm/"))
    };
    for accept in ["application/json", "application/vnd.npm.install-v1+json"] {
        let (published, pushed) = (packument("npm", accept), packument("pushed", accept));
        assert_eq!(pushed, published, "{accept}");
        assert_eq!(pushed["dist-tags"]["latest"], "1.1.0");
    }
}

#[test]
fn npm_and_cargo_install_from_a_spoke_until_a_block_made_through_the_hub_admin_api() {
    let (hub, spoke, publish, admin) = hub_and_spoke(&[("npm", "npm"), ("crates", "cargo")]);
    let hub_server = Server::start(&hub);
    let spoke_server = Server::start(&spoke);
    // Publish to the hub with the real clients.
    let npm_home = hub.path("npm-home");
    let npmrc = |server: &Server| npm_registry(&npm_home, &server.http, &publish);
    npmrc(&hub_server);
    publish_npm(
        &npm_home,
        &hub.path("npm-lib"),
        r#"{"name":"@cairn/lib","version":"1.0.0","main":"index.js"}"#,
        "module.exports = 7;\n",
    );
    let cargo_home = hub.path("cargo-home");
    let cargo_config = |server: &Server| cargo_registry(&cargo_home, &server.http);
    cargo_config(&hub_server);
    publish_crate(
        &cargo_home,
        &hub.path("cairn-lib"),
        "cairn-lib",
        "0.3.0",
        "pub fn seven() -> u32 { 7 }\n",
        &publish,
    );
    converged(&spoke);

    // Install from the spoke.
    npmrc(&spoke_server);
    cargo_config(&spoke_server);
    let app = hub.path("npm-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(&mut npm(&npm_home, &app, &["install", "@cairn/lib@1.0.0"]));
    let out = run(Command::new("node")
        .args(["-e", "console.log(require('@cairn/lib'))"])
        .current_dir(&app));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    let crate_app = hub.path("crate-app");
    std::fs::create_dir_all(crate_app.join("src")).unwrap();
    std::fs::write(crate_app.join("Cargo.toml"), "[package]\nname = \"crate-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\ncairn-lib = { version = \"=0.3.0\", registry = \"cairn\" }\n").unwrap();
    std::fs::write(
        crate_app.join("src/main.rs"),
        "fn main() { println!(\"{}\", cairn_lib::seven()); }\n",
    )
    .unwrap();
    let out = run(&mut cargo(&cargo_home, &crate_app, &["run", "--quiet"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");

    // Security staff block both through the hub's admin API while it runs.
    let call = |path: &str, body: &str| {
        raw_http(
            &hub_server.http,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        )
    };
    let (status, text) = call(
        "/api/v1/vulnerabilities",
        r#"[{"id":"CAIRN-2026-0003","modified":"2026-11-03T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"@cairn/lib"},"versions":["1.0.0"]}]},
            {"id":"CAIRN-2026-0004","modified":"2026-11-03T00:00:00Z","affected":[{"package":{"ecosystem":"crates.io","name":"cairn-lib"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0.1.0"},{"fixed":"0.4.0"}]}]}]}]"#,
    );
    assert_eq!(status, 200, "{text}");
    for vuln in ["CAIRN-2026-0003", "CAIRN-2026-0004"] {
        let (status, text) = call(
            "/api/v1/assessments",
            &format!(
                r#"{{"vulnerability":"{vuln}","type":"Blocked","comment":"malicious","author":"sec"}}"#
            ),
        );
        assert_eq!(status, 200, "{text}");
    }
    converged(&spoke);
    for (site, server) in [("hub", &hub_server), ("spoke", &spoke_server)] {
        for path in [
            "/feeds/npm/@cairn/lib/-/lib-1.0.0.tgz",
            "/feeds/crates/api/v1/crates/cairn-lib/0.3.0/download",
        ] {
            let (status, body) = http(
                &server.http,
                &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
            );
            assert_eq!(status, 403, "{site} {path}: {body}");
            assert!(
                body.contains("CAIRN-2026-000") && body.contains("malicious"),
                "{body}"
            );
        }
    }
    // A fresh npm install from the spoke fails (its cache is cleared first).
    std::fs::remove_dir_all(npm_home.join("cache")).unwrap();
    std::fs::remove_dir_all(app.join("node_modules")).unwrap();
    let _ = std::fs::remove_file(app.join("package-lock.json"));
    let out = npm(&npm_home, &app, &["install", "@cairn/lib@1.0.0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "npm installed a blocked package");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
}

/// Uploads `wide` 1.0 as COUNT wheels (build tags 1..COUNT) to the legacy upload API at URL:
/// each brings its METADATA companion, so the version holds 2 x COUNT files.
const WIDE_UPLOAD: &str = r#"
import base64, hashlib, io, sys, urllib.request, uuid, zipfile
url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
auth = "Basic " + base64.b64encode(f"__token__:{token}".encode()).decode()
for i in range(1, count + 1):
    name = f"wide-1.0-{i}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("wide/__init__.py", f"N = {i}\n")
        z.writestr("wide-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: wide\nVersion: 1.0\n")
        z.writestr("wide-1.0.dist-info/WHEEL", f"Wheel-Version: 1.0\nBuild: {i}\nTag: py3-none-any\n")
        z.writestr("wide-1.0.dist-info/RECORD", "")
    data = buf.getvalue()
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in [(":action", "file_upload"), ("name", "wide"), ("version", "1.0"),
                 ("sha256_digest", hashlib.sha256(data).hexdigest())]:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode())
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(parts), method="POST", headers={
        "Authorization": auth, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    urllib.request.urlopen(req).read()
"#;

/// Nothing the server accepts can break replication: a PyPI version with 1,000 files and a
/// raw version whose manifest is just under the 1 MiB document limit replicate to a spoke and
/// serve there, and the upload that would take the raw version over the limit is refused.
#[test]
fn versions_at_the_limits_replicate_and_one_over_is_refused_at_upload() {
    let (hub, spoke, publish, _) = hub_and_spoke(&[("pypi", "pypi"), ("files", "raw")]);
    // 3,700 files with names of 214 characters: a manifest of about 990 KB.
    let dir = hub.path("wide");
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for i in 0..3700u32 {
        let p = dir.join(format!("{i:06}-{}", "x".repeat(207)));
        std::fs::write(&p, i.to_le_bytes()).unwrap();
        paths.push(p.to_str().unwrap().to_owned());
    }
    let mut args = vec!["push", "files"];
    args.extend(paths.iter().map(String::as_str));
    args.extend(["--name", "big", "--version", "1"]);
    hub.ok(&args);
    let server = Server::start(&hub);
    run(python(&["-c", WIDE_UPLOAD])
        .arg(format!("{}/feeds/pypi/legacy/", server.http))
        .arg(&publish)
        .arg("500"));
    // More files into the raw version until its manifest would be over the limit.
    let auth = format!("Authorization: Bearer {publish}\r\n");
    let mut added = 0u32;
    let refusal = loop {
        let name = format!("more{added:04}-{}", "y".repeat(205));
        let (status, text) = raw_http(
            &server.http,
            &format!("PUT /feeds/files/big/1/{name} HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Length: 4\r\nConnection: close\r\n\r\n"),
            &added.to_le_bytes(),
        );
        if status != 201 {
            break (status, text);
        }
        added += 1;
        assert!(added < 500, "the manifest never reached the limit");
    };
    assert_eq!(refusal.0, 413, "{}", refusal.1);
    assert!(refusal.1.contains("over the limit"), "{}", refusal.1);
    eprintln!(
        "{} files fit in the raw version before the limit",
        3700 + added
    );
    server.stop();
    let listed = hub.ls("files");
    assert_eq!(
        listed[0]["files"].as_array().unwrap().len(),
        3700 + added as usize
    );
    let wide = hub.ls("pypi");
    assert_eq!(wide[0]["files"].as_array().unwrap().len(), 1000);
    let _hub_server = Server::start(&hub);
    converged(&spoke);
    let spoke_server = Server::start(&spoke);
    let (status, page) = http(
        &spoke_server.http,
        "GET /feeds/pypi/simple/wide/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(
        page.matches(".whl#sha256=").count(),
        500,
        "{}",
        &page[..page.len().min(2000)]
    );
    let (status, body) = http_bytes(
        &spoke_server.http,
        &format!(
            "GET /feeds/files/big/1/{} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            paths[1234].rsplit('/').next().unwrap()
        ),
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(body, 1234u32.to_le_bytes());
    spoke_server.stop();
    assert!(spoke.ok(&["verify"]).contains(": ok"));
}
