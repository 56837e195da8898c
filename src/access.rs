//! The access log: one line per response, to the service log (stderr, the default), stdout, or
//! a file that SIGHUP reopens (for logrotate). File lines are buffered and flushed once a
//! second by the housekeeping thread, not per request.

use std::fmt::Arguments;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use parking_lot::Mutex;

/// Where access-log lines go (the `access_log` setting).
pub enum AccessLog {
    /// Through `log` (target "access"), like the service log.
    Service,
    /// Standard output, a line at a time.
    Stdout,
    /// Appended to a file, buffered (64 KiB) until [`AccessLog::flush`].
    File {
        /// The file's path, kept for [`AccessLog::reopen`].
        path: PathBuf,
        /// The open file.
        out: Mutex<BufWriter<File>>,
    },
    /// No access log.
    Off,
}

fn open(path: &PathBuf) -> std::io::Result<BufWriter<File>> {
    let f = File::options().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, f))
}

impl AccessLog {
    /// From the `access_log` setting: "stderr", "stdout", "off", or a file path (opened for
    /// appending, created if missing).
    ///
    /// # Errors
    ///
    /// The file cannot be opened.
    pub fn from_setting(v: &str) -> std::io::Result<AccessLog> {
        Ok(match v {
            "stderr" => AccessLog::Service,
            "stdout" => AccessLog::Stdout,
            "off" => AccessLog::Off,
            path => {
                let path = PathBuf::from(path);
                let out = Mutex::new(open(&path)?);
                AccessLog::File { path, out }
            }
        })
    }

    /// Writes one line (`args` without its newline). Write errors are dropped: a full disk
    /// never fails a response.
    pub fn line(&self, args: Arguments<'_>) {
        match self {
            AccessLog::Service => log::info!(target: "access", "{args}"),
            AccessLog::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_fmt(args);
                let _ = o.write_all(b"\n");
            }
            AccessLog::File { out, .. } => {
                let mut o = out.lock();
                let _ = o.write_fmt(args);
                let _ = o.write_all(b"\n");
            }
            AccessLog::Off => {}
        }
    }

    /// Writes out a file's buffered lines (once a second, and at shutdown); a no-op otherwise.
    pub fn flush(&self) {
        if let AccessLog::File { out, .. } = self {
            let _ = out.lock().flush();
        }
    }

    /// Starts a new file at the same path (logrotate moved the old one away).
    pub fn reopen(&self) {
        if let AccessLog::File { path, out } = self {
            let mut o = out.lock();
            let _ = o.flush();
            match open(path) {
                Ok(n) => *o = n,
                Err(e) => log::error!("access log {}: cannot reopen: {e}", path.display()),
            }
        }
    }
}
