//! The `gatecache` command: parses the command line, runs a subcommand, and is the only place
//! that turns errors into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatecache::config::RawConfig;
use gatecache::store::verify::verify_dir;

#[derive(Parser)]
#[command(
    name = "gatecache",
    version,
    about = "HTTP cache for software updates on gateways"
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

fn load(args: ServeArgs) -> Result<gatecache::config::Config, String> {
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
    raw.validate().map_err(|e| e.to_string())
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
        Command::Inspect { dir } => {
            let report = verify_dir(&dir).map_err(|e| e.to_string())?;
            for (key, len, blocks) in &report.listing {
                println!("{key}\t{len} bytes\t{blocks} blocks");
            }
            Ok(ExitCode::SUCCESS)
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
