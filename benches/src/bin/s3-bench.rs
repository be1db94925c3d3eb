//! Large files through Cairn with its blobs in Garage, beside Cairn on its local backend and
//! plain S3 clients (rclone and the AWS CLI) copying the same files to the same Garage, all in
//! one run on loopback. Cairn's figures are end to end through its feed server: a raw `PUT`
//! returns once the file is stored (hashed, its outboard built, uploaded) and published; a
//! `GET` streams it back verified chunk group by chunk group.
//!
//! Then two spokes on one bucket pull the same files from a local hub in turn, and the table
//! says what each run moved over the link.
//!
//! `s3-bench [--size-mib 1024] [--runs 3] [--shared-files 8 --shared-mib 64] [--dir DIR]`;
//! needs `garage`, `rclone` and `aws` on the PATH. Writes `DIR/results.md` and `results.json`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_benches::garage::{Garage, KEY_ID, REGION, SECRET};
use cairn_benches::{median, mib_per_s, Proc};
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Cairn on Garage against its local backend and plain S3 clients")]
struct Args {
    /// Size of each file.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Files per tool (each run copies a new one up and back).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Files the hub holds for the shared-bucket scenario (0 skips it).
    #[arg(long, default_value_t = 8)]
    shared_files: usize,
    /// Size of each of those files.
    #[arg(long, default_value_t = 64)]
    shared_mib: u64,
    /// Where Garage, the instances, the files and the results go (emptied first).
    #[arg(long, default_value = "bench-scratch/s3")]
    dir: PathBuf,
}

const BUCKET: &str = "bench";

/// One Cairn instance serving a raw feed `files`.
struct Cairn {
    _proc: Proc,
    http: String,
    token: String,
}

/// Makes an instance in `dir` with a raw feed `files`: its publish token.
fn cairn_init(bin: &Path, dir: &Path, config: &str) -> Result<String> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("cairn.toml"), config)?;
    cairn_benches::cairn_cli(bin, dir, &["init"])?;
    cairn_benches::cairn_cli(bin, dir, &["feed", "create", "files", "--type", "raw"])?;
    cairn_benches::cairn_cli(bin, dir, &["token", "create", "--scope", "publish:files"])
}

fn cairn(bin: &Path, dir: &Path, config: &str) -> Result<Cairn> {
    let token = cairn_init(bin, dir, config)?;
    cairn_serve(bin, dir, token)
}

/// Starts `cairn serve` on an instance and waits until it serves.
fn cairn_serve(bin: &Path, dir: &Path, token: String) -> Result<Cairn> {
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        match lines.next() {
            Some(line) => {
                let line = line?;
                if line.starts_with("cairn serving") {
                    break line;
                }
            }
            None => bail!("cairn serve in {} stopped before serving", dir.display()),
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let http = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| anyhow!("no HTTP address in {line:?}"))?
        .trim_start_matches("http://")
        .to_owned();
    Ok(Cairn {
        _proc: proc,
        http,
        token,
    })
}

/// Reads an HTTP/1.1 response head; the status.
fn read_head(r: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut status = 0;
    let mut first = true;
    loop {
        let mut line = String::new();
        ensure!(r.read_line(&mut line)? > 0, "connection closed in the head");
        if first {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            first = false;
        }
        if line == "\r\n" {
            return Ok(status);
        }
    }
}

/// PUTs a file to Cairn's raw feed; returns when Cairn has answered.
fn cairn_put(c: &Cairn, name: &str, file: &Path) -> Result<Duration> {
    let len = fs::metadata(file)?.len();
    let start = Instant::now();
    let mut s = TcpStream::connect(&c.http)?;
    write!(
        s,
        "PUT /feeds/files/{name}/1/{name}.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        c.http, c.token
    )?;
    std::io::copy(&mut fs::File::open(file)?, &mut s)?;
    let mut r = BufReader::new(s);
    let status = read_head(&mut r)?;
    let mut body = String::new();
    r.read_to_string(&mut body)?;
    ensure!(status == 201, "PUT {name}: {status} {body}");
    Ok(start.elapsed())
}

/// GETs a file from Cairn's raw feed into nothing; checks the length.
fn cairn_get(c: &Cairn, name: &str, len: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(&c.http)?;
    write!(
        s,
        "GET /feeds/files/{name}/1/{name}.bin HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        c.http
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let status = read_head(&mut r)?;
    ensure!(status == 200, "GET {name}: {status}");
    let got = std::io::copy(&mut r, &mut std::io::sink())?;
    ensure!(got == len, "GET {name}: {got} of {len} bytes");
    Ok(start.elapsed())
}

/// Runs a command, which must succeed, timing it.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(start.elapsed())
}

fn rclone(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new("rclone");
    // rclone's S3 client cannot load a CA bundle into its own transport.
    c.args(args)
        .env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_GARAGE_TYPE", "s3")
        .env("RCLONE_CONFIG_GARAGE_PROVIDER", "Other")
        .env("RCLONE_CONFIG_GARAGE_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_GARAGE_REGION", REGION)
        .env("RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID", KEY_ID)
        .env("RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY", SECRET)
        .env("RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE", "true");
    c
}

fn aws(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new("aws");
    c.args(["--endpoint-url", endpoint, "--region", REGION])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    c
}

/// What one pull from the hub moved, from `cairn replicate --json`.
#[derive(Debug, Clone, Serialize)]
struct Pull {
    spoke: String,
    seconds: f64,
    bytes_received: u64,
    blob_bytes_received: u64,
    blobs_adopted: u64,
    blob_bytes_adopted: u64,
}

/// A hub (its `[blobs]` section `hub_blobs`, empty for local disk) with `files` x `mib` MiB,
/// and spokes (name, `[blobs]` section) pulling everything from it in turn: what each run
/// moved.
fn replication(
    bin: &Path,
    root: &Path,
    tag: &str,
    hub_blobs: &str,
    spokes: &[(&str, &str)],
    files: usize,
    mib: u64,
) -> Result<Vec<Pull>> {
    let hub = root.join(format!("{tag}-hub"));
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    cairn_init(
        bin,
        &hub,
        &format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{hub_blobs}"),
    )?;
    let mut buf = vec![0u8; (mib << 20) as usize];
    for i in 0..files {
        cairn_benches::fill_bytes(7_000 + i as u64, &mut buf);
        let f = root.join("replicated-file.bin");
        fs::write(&f, &buf)?;
        let name = format!("s{i}");
        cairn_benches::cairn_cli(
            bin,
            &hub,
            &[
                "push",
                "files",
                f.to_str().unwrap_or_default(),
                "--name",
                &name,
                "--version",
                "1",
            ],
        )?;
        fs::remove_file(&f)?;
    }
    let hub_key = cairn_benches::cairn_cli(bin, &hub, &["key", "show"])?;
    let replicate =
        cairn_benches::cairn_cli(bin, &hub, &["token", "create", "--scope", "replicate:*"])?;
    let mut dirs = Vec::new();
    for (name, blobs) in spokes {
        let dir = root.join(format!("{tag}-{name}"));
        let config = format!(
            "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{blobs}\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"files\"]\nmode = \"pull\"\ninterval_secs = 0\n"
        );
        cairn_init(bin, &dir, &config)?;
        let key = cairn_benches::cairn_cli(bin, &dir, &["key", "show"])?;
        cairn_benches::cairn_cli(
            bin,
            &hub,
            &["peer", "add", name, "127.0.0.1:1", "--key", &key],
        )?;
        cairn_benches::cairn_cli(bin, &dir, &["trust", "add", &hub_key])?;
        cairn_benches::cairn_cli(
            bin,
            &dir,
            &[
                "peer",
                "add",
                "hub",
                &format!("127.0.0.1:{port}"),
                "--key",
                &hub_key,
            ],
        )?;
        dirs.push((*name, dir));
    }
    let spokes = dirs;
    let _hub = cairn_serve(bin, &hub, String::new())?;
    let mut out = Vec::new();
    for (name, dir) in &spokes {
        let start = Instant::now();
        let text = cairn_benches::cairn_cli(bin, dir, &["replicate", "from-hub", "--json"])?;
        let seconds = start.elapsed().as_secs_f64();
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let feed = &v["feeds"][0];
        ensure!(feed["converged"] == true, "{name} did not converge: {text}");
        let n = |f: &serde_json::Value, k: &str| f[k].as_u64().unwrap_or(0);
        let pull = Pull {
            spoke: name.to_string(),
            seconds,
            bytes_received: n(&v, "bytes_received"),
            blob_bytes_received: n(feed, "blob_bytes_received"),
            blobs_adopted: n(feed, "blobs_adopted"),
            blob_bytes_adopted: n(feed, "blob_bytes_adopted"),
        };
        eprintln!("s3-bench: {pull:?}");
        out.push(pull);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    tool: String,
    upload_mib_s: f64,
    upload_min_max: (f64, f64),
    download_mib_s: f64,
    download_min_max: (f64, f64),
    upload_s: Vec<f64>,
    download_s: Vec<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = cairn_benches::fresh_dir(&args.dir)?;
    let cairn_bin = std::env::current_exe()?.with_file_name("cairn");
    let size = args.size_mib << 20;

    eprintln!("s3-bench: starting garage");
    let garage = Garage::start(&root.join("garage"), 1)?;
    garage.create_bucket(BUCKET)?;
    let endpoint = garage.nodes[0].endpoint();

    eprintln!(
        "s3-bench: writing {} files of {} MiB",
        args.runs, args.size_mib
    );
    let files: Vec<PathBuf> = (0..args.runs)
        .map(|r| {
            let path = root.join(format!("f{r}.bin"));
            let mut f = fs::File::create(&path)?;
            let mut buf = vec![0u8; 8 << 20];
            let mut left = size;
            let mut block = 0u64;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                cairn_benches::fill_bytes(r as u64 * 1_000_003 + block, &mut buf[..n]);
                f.write_all(&buf[..n])?;
                left -= n as u64;
                block += 1;
            }
            f.sync_all()?;
            Ok(path)
        })
        .collect::<Result<_>>()?;

    let listen = format!(
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_upload_mib = {}\n",
        args.size_mib + 64
    );
    let local = cairn(&cairn_bin, &root.join("cairn-local"), &listen)?;
    let on_garage = cairn(
        &cairn_bin,
        &root.join("cairn-garage"),
        &format!("{listen}\n{}", garage.cairn_config(0, BUCKET, "cairn")?),
    )?;

    let tools = ["cairn (local disk)", "cairn (garage)", "rclone", "aws-cli"];
    let mut up: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut down: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (r, file) in files.iter().enumerate() {
        let name = format!("f{r}");
        let key = format!("{BUCKET}/plain/{name}.bin");
        // Rotate the order so no tool always goes first.
        for i in 0..tools.len() {
            let tool = tools[(i + r) % tools.len()];
            let file_arg = file.to_str().ok_or_else(|| anyhow!("path is not UTF-8"))?;
            let (u, d) = match tool {
                "cairn (local disk)" => (
                    cairn_put(&local, &name, file)?,
                    cairn_get(&local, &name, size)?,
                ),
                "cairn (garage)" => (
                    cairn_put(&on_garage, &name, file)?,
                    cairn_get(&on_garage, &name, size)?,
                ),
                "rclone" => (
                    timed(&mut rclone(
                        &endpoint,
                        &["copyto", file_arg, &format!("garage:{key}")],
                    ))?,
                    timed(&mut rclone(&endpoint, &["cat", &format!("garage:{key}")]))?,
                ),
                _ => {
                    let url = format!("s3://{BUCKET}/aws/{name}.bin");
                    (
                        timed(&mut aws(
                            &endpoint,
                            &["s3", "cp", "--quiet", file_arg, &url],
                        ))?,
                        timed(&mut aws(&endpoint, &["s3", "cp", "--quiet", &url, "-"]))?,
                    )
                }
            };
            eprintln!(
                "s3-bench: run {r} {tool}: up {:.1} MiB/s, down {:.1} MiB/s",
                mib_per_s(size, u),
                mib_per_s(size, d)
            );
            up.entry(tool).or_default().push(u);
            down.entry(tool).or_default().push(d);
        }
    }

    let rate = |v: &[Duration]| {
        let rates: Vec<f64> = v.iter().map(|d| mib_per_s(size, *d)).collect();
        let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = rates.iter().cloned().fold(0.0, f64::max);
        (mib_per_s(size, median(v)), (min, max))
    };
    let rows: Vec<Row> = tools
        .iter()
        .map(|tool| {
            let (u, umm) = rate(&up[tool]);
            let (d, dmm) = rate(&down[tool]);
            Row {
                tool: tool.to_string(),
                upload_mib_s: u,
                upload_min_max: umm,
                download_mib_s: d,
                download_min_max: dmm,
                upload_s: up[tool].iter().map(|d| d.as_secs_f64()).collect(),
                download_s: down[tool].iter().map(|d| d.as_secs_f64()).collect(),
            }
        })
        .collect();
    let baseline = rows
        .iter()
        .find(|r| r.tool == "rclone")
        .cloned()
        .ok_or_else(|| anyhow!("no rclone row"))?;
    let mut md = format!(
        "# s3-bench\n\n{} files of {} MiB per tool, median (min-max) MiB/s; ratio against rclone on the same Garage.\n\n\
         | tool | upload MiB/s | vs rclone | download MiB/s | vs rclone |\n| --- | --- | --- | --- | --- |\n",
        args.runs, args.size_mib
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.2}x | {:.0} ({:.0}-{:.0}) | {:.2}x |\n",
            r.tool,
            r.upload_mib_s,
            r.upload_min_max.0,
            r.upload_min_max.1,
            r.upload_mib_s / baseline.upload_mib_s,
            r.download_mib_s,
            r.download_min_max.0,
            r.download_min_max.1,
            r.download_mib_s / baseline.download_mib_s,
        ));
    }
    let mut shared = Vec::new();
    let mut serving = Vec::new();
    if args.shared_files > 0 {
        eprintln!("s3-bench: two spokes sharing a bucket");
        let on_bucket = garage.cairn_config(0, BUCKET, "shared")?;
        shared = replication(
            &cairn_bin,
            &root,
            "shared",
            "",
            &[("spoke-a", &on_bucket), ("spoke-b", &on_bucket)],
            args.shared_files,
            args.shared_mib,
        )?;
        eprintln!("s3-bench: a local spoke pulling from a hub on local disk, then on Garage");
        for (tag, blobs) in [
            ("from-local-hub", String::new()),
            ("from-garage-hub", garage.cairn_config(0, BUCKET, "hub")?),
        ] {
            serving.extend(replication(
                &cairn_bin,
                &root,
                tag,
                &blobs,
                &[(tag, "")],
                args.shared_files,
                args.shared_mib,
            )?);
        }
    }
    let pulls = |md: &mut String, title: String, rows: &[Pull]| {
        md.push_str(&format!(
            "\n{title}\n\n\
             | spoke | seconds | MB/s | bytes received | blob bytes received | blobs taken from the bucket |\n| --- | --- | --- | --- | --- | --- |\n"
        ));
        for p in rows {
            md.push_str(&format!(
                "| {} | {:.2} | {:.0} | {} | {} | {} ({} bytes) |\n",
                p.spoke,
                p.seconds,
                p.bytes_received as f64 / p.seconds / 1e6,
                p.bytes_received,
                p.blob_bytes_received,
                p.blobs_adopted,
                p.blob_bytes_adopted
            ));
        }
    };
    if !shared.is_empty() {
        pulls(
            &mut md,
            format!(
                "Two spokes on one bucket and prefix pull {} files of {} MiB from a local hub in turn (`cairn replicate --json`):",
                args.shared_files, args.shared_mib
            ),
            &shared,
        );
        pulls(
            &mut md,
            format!(
                "A spoke on local disk pulls the same {} files of {} MiB over QUIC on loopback from a hub on local disk, then from a hub whose blobs are in Garage:",
                args.shared_files, args.shared_mib
            ),
            &serving,
        );
    }
    print!("{md}");
    fs::write(root.join("results.md"), &md)?;
    fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "size_mib": args.size_mib,
            "runs": args.runs,
            "rows": rows,
            "shared_bucket": shared,
            "hub_serving": serving,
        }))?,
    )?;
    Ok(())
}
