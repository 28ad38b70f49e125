//! The `flightlog` command: `serve` runs the ingest node; `wal dump` and
//! `wal verify` inspect a WAL directory without modifying it; `wal
//! discard-table` is the operator's way out of a quarantined table.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use flightlog::config::{Config, ServeArgs};
use flightlog::node::{Node, StartState};
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
    /// Run the ingest node (Arrow Flight do_put on --listen).
    Serve(Box<ServeArgs>),
    /// Replicate a Postgres publication into the node (logical replication,
    /// pgoutput): an initial copy, then the stream; a client of the node.
    Replicate(Box<flightlog::replicate::ReplicateArgs>),
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
    /// Give up on the pending changes of one table (for a table that stays
    /// quarantined): its acknowledged but unflushed transactions are marked
    /// applied without being written, so every origin's durable sequence can
    /// advance again. Lists them first; needs --yes to act. The node must be
    /// stopped (the WAL is locked while it runs). Takes the node's flags.
    DiscardTable {
        #[command(flatten)]
        serve: Box<ServeArgs>,
        /// The table's canonical name, as the quarantine log line and the
        /// metrics print it (e.g. file:///srv/data/lake/shop/orders).
        #[arg(long)]
        table: String,
        /// Really discard (without it, only list what would go).
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(*args),
        Command::Wal { command } => run_wal(command),
        Command::Replicate(args) => run_replicate(*args),
    }
}

fn run_replicate(args: flightlog::replicate::ReplicateArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flightlog replicate: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(flightlog::replicate::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flightlog replicate: {error}");
            ExitCode::from(1)
        }
    }
}

/// The configuration and a runtime for a command that runs a node, or the
/// exit code after saying why not (2: bad configuration, 1: no runtime).
fn prepare(
    name: &str,
    args: ServeArgs,
    multi_thread: bool,
) -> Result<(Config, tokio::runtime::Runtime), ExitCode> {
    let config = Config::resolve(args).map_err(|error| {
        eprintln!("{name}: {error}");
        ExitCode::from(2)
    })?;
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder.enable_all().build().map_err(|error| {
        eprintln!("{name}: cannot start the runtime: {error}");
        ExitCode::from(1)
    })?;
    Ok((config, runtime))
}

fn run_serve(args: ServeArgs) -> ExitCode {
    flightlog::flush::memory::tune_allocator(
        std::thread::available_parallelism().map_or(1, |cores| cores.get()),
    );
    let (config, runtime) = match prepare("flightlog serve", args, true) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    flightlog::ops::logging::init(config.ops.log_format);
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flightlog serve: {error}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    let options = serve_options(&config)?;
    // The HTTP endpoints answer from before recovery ("recovering").
    let health = flightlog::ops::http::Health::new();
    let (http_stop, http_stopped) = tokio::sync::watch::channel(false);
    let http = match config.ops.http_listen {
        Some(addr) => {
            let http_listener = tokio::net::TcpListener::bind(addr).await?;
            let http_address = http_listener.local_addr()?;
            tracing::info!(%http_address, "HTTP endpoints /metrics /healthz /readyz");
            let mut stopped = http_stopped.clone();
            let task = tokio::spawn(flightlog::ops::http::serve(
                http_listener,
                health.clone(),
                async move {
                    while !*stopped.borrow_and_update() {
                        if stopped.changed().await.is_err() {
                            break;
                        }
                    }
                },
            ));
            Some((http_address, task))
        }
        None => None,
    };
    let (node, state) = Node::open(config).await?;
    health.set_node(node.clone());
    let reloader = options.tokens.clone().map(spawn_token_reloader);
    let flusher = flightlog::flush::start(node.flush_context());
    let sweeper = flightlog::node::spawn_idle_sweeper(node.clone());
    let mut line = start_line(&node, address, &state);
    if let Some((http_address, _)) = &http {
        line.push_str(&format!(" http={http_address}"));
    }
    line.push_str(&format!(
        " tls={} auth={}",
        if options.tls.is_some() { "on" } else { "off" },
        if options.tokens.is_some() {
            "tokens"
        } else {
            "off"
        }
    ));
    println!("{line}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let shutdown = {
        let node = node.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("signal received: refusing new puts, finishing in-flight ones");
            node.begin_shutdown();
        }
    };
    flightlog::flight::serve_with(node.clone(), listener, options, shutdown).await?;
    sweeper.abort();
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    flusher.stop().await;
    node.wal().close();
    let _ = http_stop.send(true);
    if let Some((_, task)) = http {
        let _ = task.await;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// TLS and tokens of the Flight port from the configuration.
fn serve_options(
    config: &Config,
) -> Result<flightlog::flight::ServeOptions, Box<dyn std::error::Error>> {
    let tls = flightlog::ops::tls::server_config(&config.ops)?;
    let tokens = match &config.ops.auth_token_file {
        Some(path) => Some(std::sync::Arc::new(flightlog::ops::auth::Tokens::load(
            path,
        )?)),
        None => None,
    };
    Ok(flightlog::flight::ServeOptions { tls, tokens })
}

/// Re-reads the token file on every SIGHUP; a file that does not parse
/// keeps the tokens in force (and says why, without any token).
fn spawn_token_reloader(
    tokens: std::sync::Arc<flightlog::ops::auth::Tokens>,
) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the token file is read only at start");
            return;
        };
        while hangup.recv().await.is_some() {
            match tokens.reload() {
                Ok(count) => tracing::info!(tokens = count, "SIGHUP: token file re-read"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: token file not re-read; the previous tokens stay in force")
                }
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the node runs until killed.
            std::future::pending::<()>().await;
        }
    }
}

fn start_line(node: &Node, address: std::net::SocketAddr, state: &StartState) -> String {
    let config = node.config();
    let allow = if config.allow_store.is_empty() {
        "any (no --allow-store given: clients may write to every store location)".to_string()
    } else {
        config.allow_store.join(",")
    };
    let lsns = match (state.first_lsn, state.last_lsn) {
        (Some(first), Some(last)) => format!("{first}..{last}"),
        _ => "none".to_string(),
    };
    format!(
        "flightlog listening on {address} wal={} wal_id={} store={} allow_store={allow} recovered: segments={} frames={} lsn={lsns} pending_frames={} origins={} aborted_transactions={} unresolvable_frames={} torn_tail={}",
        config.wal_dir().display(),
        state.wal_id,
        config.default_store,
        state.segments,
        state.frames,
        state.pending_frames,
        state.origins,
        state.aborted_transactions,
        state.unresolvable_frames,
        state.torn_tail.as_deref().unwrap_or("none"),
    )
}

fn run_wal(command: WalCommand) -> ExitCode {
    if let WalCommand::DiscardTable { serve, table, yes } = command {
        return run_discard(*serve, &table, yes);
    }
    let mut out = std::io::stdout().lock();
    let result = match command {
        WalCommand::DiscardTable { .. } => unreachable!("handled above"),
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

fn run_discard(args: ServeArgs, table: &str, yes: bool) -> ExitCode {
    let (config, runtime) = match prepare("flightlog wal discard-table", args, false) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    match runtime.block_on(discard(config, table, yes)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("flightlog wal discard-table: {error}");
            ExitCode::from(1)
        }
    }
}

async fn discard(
    config: Config,
    table: &str,
    yes: bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    let (node, _) = Node::open(config).await?;
    let pending = node.pending();
    let tables = pending.pending_tables();
    let Some(id) = tables.iter().find(|id| id.canonical() == table) else {
        println!("no pending changes for table {table}; tables with pending changes:");
        for id in &tables {
            println!("  {id}");
        }
        return Ok(false);
    };
    let transactions = pending.transactions_of(id);
    println!("table {id}: {} pending transactions:", transactions.len());
    for (origin, sequence) in &transactions {
        println!("  origin {:?} sequence {sequence}", origin.as_str());
    }
    if !yes {
        println!("nothing changed; run again with --yes to discard them");
        return Ok(true);
    }
    let Some(last) = pending.last_commit(id) else {
        return Ok(true);
    };
    pending.mark_applied(id, last);
    flightlog::flush::checkpoint_and_truncate(&node.flush_context()).await?;
    node.wal().close();
    println!("discarded: the WAL records table {id} as applied through Lsn {}; its changes were never written", last.0);
    Ok(true)
}
