//! Work that may take more memory or time than a server can spare — compiling a guest,
//! rendering a configuration template — run in a child process of the `weir` binary,
//! whose memory the child caps itself (`RLIMIT_DATA`: its heap and private mappings) and
//! which is killed at a deadline. However
//! the work goes wrong (out of memory, a stack overflow, a loop), the parent sees a child
//! that failed, and says why.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most bytes of a child's error output kept.
const MAX_STDERR: usize = 4096;

/// How a child did not do its work.
#[derive(Debug)]
pub enum Failure {
    /// It could not be started.
    Start(std::io::Error),
    /// It ran past its deadline and was killed.
    TimedOut(Duration),
    /// It died of a signal (out of memory aborts, a stack overflow segfaults), with what it
    /// wrote on stderr.
    Killed {
        /// The signal.
        signal: i32,
        /// Its error output, cut to a few KiB.
        stderr: String,
    },
    /// It exited with a failure, with what it wrote on stderr.
    Failed {
        /// Its error output, cut to a few KiB.
        stderr: String,
    },
}

impl Failure {
    /// Whether the child ran out of memory (was killed, or said so).
    pub fn out_of_memory(&self) -> bool {
        match self {
            Failure::Killed { .. } => true,
            Failure::Failed { stderr } => {
                stderr.contains("memory allocation") || stderr.contains("out of memory")
            }
            _ => false,
        }
    }

    /// What the child wrote on stderr, if anything.
    pub fn stderr(&self) -> &str {
        match self {
            Failure::Killed { stderr, .. } | Failure::Failed { stderr } => stderr,
            _ => "",
        }
    }
}

/// Runs `exe args…` with `input` on stdin and `WEIR_LOG=warn`, and returns its stdout once
/// it exits successfully within `timeout`.
pub fn run(exe: &Path, args: &[&str], input: &[u8], timeout: Duration) -> Result<Vec<u8>, Failure> {
    let mut child = Command::new(exe)
        .args(args)
        .env("WEIR_LOG", "warn")
        // mimalloc reserves its arenas a GiB at a time, which a capped child cannot spare.
        .env("MIMALLOC_ARENA_RESERVE", "64MiB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Failure::Start)?;
    // Fed and drained on threads of their own: a pipe holds only so much.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stderr)
            .take(MAX_STDERR as u64 * 4)
            .read_to_end(&mut out);
        // Keep draining, so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::TimedOut(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Failure::Start(e)),
        }
    };
    let _ = feeder.join();
    let output = reader.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    let stderr = crate::text::truncate(String::from_utf8_lossy(&stderr).trim(), MAX_STDERR);
    if status.success() {
        return Ok(output);
    }
    Err(match status.signal() {
        Some(signal) => Failure::Killed { signal, stderr },
        None => Failure::Failed { stderr },
    })
}

/// Caps this process's memory at `bytes` (the child's side of [`run`]): past it,
/// allocations fail and the process aborts.
pub fn cap_memory(bytes: usize) -> anyhow::Result<()> {
    let limit = bytes as u64;
    rlimit::setrlimit(rlimit::Resource::DATA, limit, limit)
        .map_err(|e| anyhow::anyhow!("cannot cap the memory at {limit} bytes: {e}"))
}
