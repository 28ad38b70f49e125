//! The `flightlog` command: `serve` runs the ingest node; `wal dump` and
//! `wal verify` inspect a WAL directory without modifying it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use flightlog::wal::dump::{dump, verify, DumpOptions};
use flightlog::wal::format::FRAME_HEADER_LEN;

#[derive(Parser)]
#[command(
    name = "flightlog",
    version,
    about = "Crash-safe ingest node: Arrow Flight sync → WAL → Delta Lake"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a write-ahead log directory (read-only, no lock taken).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// List every segment and frame: offset, length, CRC status, kind, Lsn,
    /// origin, sequence, table, rows, schema. Exits 1 on corruption.
    Dump {
        dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Print the rows of data frames.
        #[arg(long)]
        rows: bool,
        /// After a bad frame, go on listing from the next valid one.
        #[arg(long)]
        continue_on_error: bool,
        /// Largest frame payload to accept, in bytes (the node's limit).
        #[arg(long, default_value_t = 1 << 30)]
        frame_bytes_max: u64,
    },
    /// Check every frame as recovery would; print a summary. Exits 1 on corruption.
    Verify {
        dir: PathBuf,
        #[arg(long, default_value_t = 1 << 30)]
        frame_bytes_max: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Wal { command } => run_wal(command),
    }
}

fn run_wal(command: WalCommand) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let result = match command {
        WalCommand::Dump {
            dir,
            json,
            rows,
            continue_on_error,
            frame_bytes_max,
        } => {
            let options = DumpOptions {
                json,
                rows,
                continue_on_error,
                body_len_max: frame_bytes_max + FRAME_HEADER_LEN as u64,
            };
            dump(&dir, options, &mut out).map(|v| v.scan.is_ok())
        }
        WalCommand::Verify {
            dir,
            frame_bytes_max,
        } => verify(&dir, frame_bytes_max + FRAME_HEADER_LEN as u64, &mut out)
            .map(|scan| scan.is_ok()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("flightlog wal: {error}");
            ExitCode::from(2)
        }
    }
}
