//! `cairn-benches`: benchmark binaries and their shared helpers.
//!
//! - `store-bench`: ingest throughput against `cp`, small-package publish rate, Merkle update
//!   and root-read cost. Every figure is a median over repeated runs, printed beside a baseline
//!   measured in the same run.
//!
//! Benchmarks live here, never as timed assertions in tests.

use std::time::Duration;

pub mod garage;
pub mod instance;

/// Empties (or makes) a benchmark's scratch directory; its absolute path.
pub fn fresh_dir(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::canonicalize(dir)
}

/// The median of some durations (the mean of the middle two for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    match s.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2,
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for storage benchmarks.
pub fn fill_bytes(seed: u64, out: &mut [u8]) {
    cairn_store::rng::Xorshift::new(seed).fill(out);
}

/// Bytes per second as MiB/s.
pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn fill_is_deterministic_and_seeded() {
        let (mut a, mut b, mut c) = ([0u8; 37], [0u8; 37], [0u8; 37]);
        fill_bytes(1, &mut a);
        fill_bytes(1, &mut b);
        fill_bytes(2, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

/// Stops a child: SIGTERM, then SIGKILL if it has not exited within `grace`; reaped either
/// way. The one way benchmarks and tests stop what they started.
pub fn stop_child(child: &mut std::process::Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(std::process::Stdio::null())
        .status();
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `BIN --data-dir DIR ARGS` (the `cairn` command line), which must succeed; its stdout,
/// trimmed.
pub fn cairn_cli(
    bin: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cairn {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A child process stopped on drop ([`stop_child`], 5 s of grace).
#[derive(Debug)]
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        stop_child(&mut self.0, Duration::from_secs(5));
    }
}

/// A binary built beside the running one (`cairn`, `cairn-link`).
pub fn sibling(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        p.display()
    );
    Ok(p)
}

/// CPU seconds a process and its reaped children have used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
        return 0.0;
    };
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    if f.len() < 15 {
        return 0.0;
    }
    (f[11] + f[12] + f[13] + f[14]) as f64 / 100.0
}

/// A process's resident set and its peak so far (`VmRSS`, `VmHWM`), in bytes; zeros once it
/// has gone.
pub fn rss_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib << 10)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Registers DejaVu Sans as the charts' "sans-serif" (Debian package fonts-dejavu-core).
pub fn register_font() -> anyhow::Result<()> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(FONT)
        .map_err(|e| anyhow::anyhow!("{FONT} (Debian package fonts-dejavu-core): {e}"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    Ok(())
}
