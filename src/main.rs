//! The `gatecache` command: parses the command line, runs a subcommand, and is the only place
//! that turns errors into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatecache::cache::Cache;
use gatecache::store::verify::verify_dir;
use gatecache::store::{DriveConfig, StoreConfig};

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
    /// Open the cache on its embedded defaults and recover it (serving arrives with the
    /// HTTP front end).
    Serve {
        /// Cache directory.
        #[arg(long, default_value = "gatecache-cache")]
        storage: PathBuf,
        /// Size budget of the cache directory, e.g. 2GiB.
        #[arg(long, default_value = "2GiB", value_parser = parse_size)]
        size: u64,
        /// Block size, a power of two from 64KiB to 16MiB.
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        block_size: u64,
    },
    /// Check every header and data crc of a cache directory; exit 1 if anything is damaged.
    Verify { dir: PathBuf },
    /// List the objects a cache directory holds.
    Inspect { dir: PathBuf },
}

/// Parses sizes like `1048576`, `64KiB`, `1MiB`, `20GiB`, `10GB`.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

fn store_config(dirs: Vec<(PathBuf, u64)>, block_size: u64) -> Result<StoreConfig, String> {
    let mut cfg = StoreConfig::new(
        dirs.into_iter()
            .map(|(path, size)| DriveConfig { path, size })
            .collect(),
    );
    cfg.block_size = u32::try_from(block_size).map_err(|_| "block_size: too large".to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let command = cli.command.unwrap_or(Command::Serve {
        storage: "gatecache-cache".into(),
        size: 2 << 30,
        block_size: 1 << 20,
    });
    match command {
        Command::Serve {
            storage,
            size,
            block_size,
        } => {
            let cfg = store_config(vec![(storage, size)], block_size)?;
            let (cache, report) = Cache::open(&cfg).map_err(|e| e.to_string())?;
            println!(
                "cache open: {} objects, {} blocks, {} bytes recovered in {:.1?}; capacity {} bytes",
                report.objects,
                report.blocks,
                report.bytes,
                report.elapsed,
                cache.store().capacity_bytes()
            );
            Ok(ExitCode::SUCCESS)
        }
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

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").is_err());
        assert!(
            parse_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
