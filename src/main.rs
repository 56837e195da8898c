//! The `gatecache` command: parses the command line, runs a subcommand, and is the only place
//! that turns errors into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatecache::config::{Config, RawConfig};
use gatecache::store::verify::verify_dir;

#[derive(Parser)]
#[command(
    name = "gatecache",
    version,
    about = "HTTP cache for software updates on gateways",
    long_about = "gatecache: an HTTP cache for software updates (Device Update blobs, OS images, \
apt packages) on IoT and factory gateways. Clients talk plain HTTP to it; it fetches from the \
origins (or from parent caches) once, stores on disk, and serves every later request for the \
same bytes itself.\n\n\
Configuration: /etc/gatecache/gatecache.toml (see gatecache.example.toml), then the \
environment variables UPSTREAM_HOST, UPSTREAM_PROXY, CACHEABLE_CUSTOM_<N>_HOST, \
CACHEABLE_CUSTOM_<N>_CANONICAL, STORAGE_<N>_SIZE_GB (with GATECACHE_STORAGE_ROOT), \
IS_SUMMARY_ACCESS_UNRESTRICTED, then the flags. RUST_LOG sets the service log's level.\n\n\
Signals: SIGTERM or SIGINT stop accepting, let responses in progress finish (shutdown_grace), \
finish fetches, flush and exit 0; SIGHUP reopens the access log file.\n\n\
Admin listener (127.0.0.1:9180 by default): /summary (JSON), /metrics (Prometheus), /healthz, \
/readyz."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cache (the default). Configuration: --config, else /etc/gatecache/gatecache.toml
    /// if it exists, else embedded defaults (port 80, the Device Update and Windows Update
    /// hosts, a 2 GiB cache in ./gatecache-cache); then the original module's environment
    /// variables (UPSTREAM_HOST, UPSTREAM_PROXY, CACHEABLE_CUSTOM_<N>_HOST/_CANONICAL,
    /// STORAGE_<N>_SIZE_GB, IS_SUMMARY_ACCESS_UNRESTRICTED); then the flags.
    Serve(ServeArgs),
    /// Print the effective configuration (file, environment and flags, with every default) as
    /// TOML and exit 0; or name the bad value and exit 1.
    CheckConfig(ServeArgs),
    /// Check every header and data crc of a cache directory; exit 1 if anything is damaged.
    Verify { dir: PathBuf },
    /// List the objects a cache directory holds.
    Inspect { dir: PathBuf },
    /// Ask a running cache's admin listener whether it is alive (`/healthz`); exit 0 or 1.
    /// For container health checks, where there is no curl.
    Healthcheck {
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:9180")]
        admin: std::net::SocketAddr,
    },
    /// Print the manual page (roff) to standard output.
    #[command(hide = true)]
    Man,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `listen` (address:port).
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `io_backend` (auto, uring, epoll).
    #[arg(long)]
    io_backend: Option<String>,
}

/// Where the configuration is read from when --config is not given.
const DEFAULT_CONFIG: &str = "/etc/gatecache/gatecache.toml";

/// The configuration to run with: the file (or the embedded defaults), the environment and
/// the flags, validated, then the resources it names read (`upstream.ca_file`, the host name).
fn load(args: ServeArgs) -> Result<Config, String> {
    let file = args.config.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let mut raw = match &file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("config {}: {e}", p.display()))?;
            log::info!("configuration: {}", p.display());
            RawConfig::from_toml(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => {
            log::info!("configuration: embedded defaults ({DEFAULT_CONFIG} does not exist)");
            RawConfig::default()
        }
    };
    raw.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    if args.listen.is_some() {
        raw.listen = args.listen;
    }
    if args.io_backend.is_some() {
        raw.io_backend = args.io_backend;
    }
    // Validation reads no file; the CA file and the host name are read after it.
    raw.validate()
        .and_then(Config::load_resources)
        .map_err(|e| e.to_string())
}

fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    gatecache::server::run(load(args)?)?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => match load(args) {
            Ok(cfg) => {
                print!("{}", cfg.render());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("gatecache: {e}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Verify { dir } => {
            let report = verify_dir(&dir).map_err(|e| e.to_string())?;
            print!("{}", report.render());
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Healthcheck { admin } => Ok(healthcheck(admin)),
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| format!("man: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { dir } => {
            let report = verify_dir(&dir).map_err(|e| e.to_string())?;
            for (key, len, blocks) in &report.listing {
                println!("{key}\t{len} bytes\t{blocks} blocks");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn healthcheck(admin: std::net::SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let t = std::time::Duration::from_secs(3);
    let ok = (|| -> std::io::Result<bool> {
        let mut s = std::net::TcpStream::connect_timeout(&admin, t)?;
        s.set_read_timeout(Some(t))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    })();
    match ok {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("gatecache: {admin}/healthz did not answer 200");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("gatecache: {admin}/healthz: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatecache: {e}");
            ExitCode::from(2)
        }
    }
}
