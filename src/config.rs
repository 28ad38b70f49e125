//! Every knob of `flightlog serve`, with units and defaults. Each can be set
//! by flag, by `FLIGHTLOG_<NAME>` environment variable, or by the same key
//! (snake_case) in the TOML file given with `--config`; flag and environment
//! win over the file, the file over the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::wal::segment::SegmentInit;
use crate::wal::WalConfig;

/// Flags of `flightlog serve` (all optional: unset means "file or default").
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the keys below.
    #[arg(long, env = "FLIGHTLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the Flight server [default: 127.0.0.1:47470].
    #[arg(long, env = "FLIGHTLOG_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: WAL in <data-dir>/wal, default Delta store in <data-dir>/lake [default: ./data].
    #[arg(long, env = "FLIGHTLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Default store URL for commands without `store` [default: file://<data-dir>/lake].
    #[arg(long, env = "FLIGHTLOG_DEFAULT_STORE")]
    pub default_store: Option<String>,
    /// URL prefix a client-supplied store.location must start with; repeatable.
    /// None configured: every location is allowed (as Seafowl does).
    #[arg(
        long = "allow-store",
        env = "FLIGHTLOG_ALLOW_STORE",
        value_delimiter = ','
    )]
    pub allow_store: Vec<String>,
    /// Flush a table once its oldest pending change is this old [default: 1000].
    #[arg(long, env = "FLIGHTLOG_MAX_LAG_MS")]
    pub max_lag_ms: Option<u64>,
    /// Flush a table once its pending bytes reach this [default: 128 MiB].
    #[arg(long, env = "FLIGHTLOG_TABLE_FLUSH_BYTES")]
    pub table_flush_bytes: Option<u64>,
    /// Above this many pending WAL bytes, flush the largest tables first [default: 1 GiB].
    #[arg(long, env = "FLIGHTLOG_PENDING_BYTES_LOW_WATERMARK")]
    pub pending_bytes_low_watermark: Option<u64>,
    /// Above this many pending WAL bytes, answer accepted = false [default: 4 GiB].
    #[arg(long, env = "FLIGHTLOG_PENDING_BYTES_HIGH_WATERMARK")]
    pub pending_bytes_high_watermark: Option<u64>,
    /// Largest do_put message (IPC bytes of its batches) [default: 1 GiB].
    #[arg(long, env = "FLIGHTLOG_MESSAGE_BYTES_MAX")]
    pub message_bytes_max: Option<u64>,
    /// A message is written as WAL frames of about this size [default: 16 MiB].
    #[arg(long, env = "FLIGHTLOG_FRAME_BYTES_TARGET")]
    pub frame_bytes_target: Option<u64>,
    /// A put whose client sends nothing for this long is abandoned [default: 60000].
    #[arg(long, env = "FLIGHTLOG_PUT_IDLE_TIMEOUT_MS")]
    pub put_idle_timeout_ms: Option<u64>,
    /// Let clients and the default store use memory:// stores, whose data is
    /// gone when the process exits (tests and demos only) [default: off].
    #[arg(long, env = "FLIGHTLOG_ALLOW_MEMORY_STORE")]
    pub allow_memory_store: bool,
    /// Abort an origin's open transaction after this long without a message
    /// from it; its next answer says first = true [default: 600000].
    #[arg(long, env = "FLIGHTLOG_OPEN_TRANSACTION_TIMEOUT_MS")]
    pub open_transaction_timeout_ms: Option<u64>,
    /// Quarantine a table after this many consecutive failed flushes (3 when
    /// the error cannot go away by retrying) [default: 20].
    #[arg(long, env = "FLIGHTLOG_QUARANTINE_AFTER_FAILURES")]
    pub quarantine_after_failures: Option<u32>,
    /// Try a quarantined table again this often [default: 60000].
    #[arg(long, env = "FLIGHTLOG_QUARANTINE_RETRY_MS")]
    pub quarantine_retry_ms: Option<u64>,
    /// Longest wait for a store to answer the first check of a table at put
    /// time (Unavailable after it) [default: 10000].
    #[arg(long, env = "FLIGHTLOG_STORE_CHECK_TIMEOUT_MS")]
    pub store_check_timeout_ms: Option<u64>,
    /// WAL segment size [default: 64 MiB].
    #[arg(long, env = "FLIGHTLOG_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// How new WAL segments get their space [default: recycle].
    #[arg(long, env = "FLIGHTLOG_SEGMENT_INIT", value_enum)]
    pub segment_init: Option<SegmentInit>,
    /// Most tables flushed at the same time [default: 2 x the cores].
    #[arg(long, env = "FLIGHTLOG_FLUSH_CONCURRENCY")]
    pub flush_concurrency: Option<usize>,
    /// Most bytes all running flushes together hold decoded (frames read
    /// back, their squash, Parquet being encoded); a flush waits for room
    /// [default: 1 GiB].
    #[arg(long, env = "FLIGHTLOG_MEMORY_BUDGET")]
    pub memory_budget: Option<u64>,
    /// Address of the HTTP endpoints /metrics, /healthz, /readyz [default: off].
    #[arg(long, env = "FLIGHTLOG_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Log line format on stderr [default: text].
    #[arg(long, env = "FLIGHTLOG_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain of the Flight port; with --tls-key turns on TLS [default: off].
    #[arg(long, env = "FLIGHTLOG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLIGHTLOG_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate they signed [default: off].
    #[arg(long, env = "FLIGHTLOG_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one per line, each optionally followed by the
    /// store-location prefixes it may write; re-read on SIGHUP [default: off, no authentication].
    #[arg(long, env = "FLIGHTLOG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Compaction merges a table's small data files toward this size [default: 128 MiB].
    #[arg(long, env = "FLIGHTLOG_TARGET_FILE_BYTES")]
    pub target_file_bytes: Option<u64>,
    /// Data files no longer referenced are deleted after this many hours [default: 168].
    #[arg(long, env = "FLIGHTLOG_VACUUM_RETENTION_HOURS")]
    pub vacuum_retention_hours: Option<u64>,
    /// A Delta checkpoint every this many commits of a table [default: 10].
    #[arg(long, env = "FLIGHTLOG_CHECKPOINT_INTERVAL_COMMITS")]
    pub checkpoint_interval_commits: Option<u64>,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of the operator-facing surface (HTTP, logs, TLS, tokens) and of
/// table maintenance.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub http_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub auth_token_file: Option<PathBuf>,
    pub target_file_bytes: u64,
    pub vacuum_retention_hours: u64,
    pub checkpoint_interval_commits: u64,
}

/// The same keys in the `--config` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    default_store: Option<String>,
    allow_store: Option<Vec<String>>,
    max_lag_ms: Option<u64>,
    table_flush_bytes: Option<u64>,
    pending_bytes_low_watermark: Option<u64>,
    pending_bytes_high_watermark: Option<u64>,
    message_bytes_max: Option<u64>,
    frame_bytes_target: Option<u64>,
    put_idle_timeout_ms: Option<u64>,
    allow_memory_store: Option<bool>,
    open_transaction_timeout_ms: Option<u64>,
    quarantine_after_failures: Option<u32>,
    quarantine_retry_ms: Option<u64>,
    store_check_timeout_ms: Option<u64>,
    segment_bytes: Option<u64>,
    segment_init: Option<SegmentInit>,
    flush_concurrency: Option<usize>,
    memory_budget: Option<u64>,
    http_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    auth_token_file: Option<PathBuf>,
    target_file_bytes: Option<u64>,
    vacuum_retention_hours: Option<u64>,
    checkpoint_interval_commits: Option<u64>,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Store root URL for commands without `store`.
    pub default_store: String,
    pub allow_store: Vec<String>,
    pub max_lag_ms: u64,
    pub table_flush_bytes: u64,
    pub pending_bytes_low_watermark: u64,
    pub pending_bytes_high_watermark: u64,
    pub message_bytes_max: u64,
    pub frame_bytes_target: u64,
    pub put_idle_timeout_ms: u64,
    pub allow_memory_store: bool,
    pub open_transaction_timeout_ms: u64,
    pub quarantine_after_failures: u32,
    pub quarantine_retry_ms: u64,
    pub store_check_timeout_ms: u64,
    pub wal: WalConfig,
    /// Most tables flushed at the same time (at least 1).
    pub flush_concurrency: usize,
    /// Most bytes the running flushes hold decoded, together.
    pub memory_budget: u64,
    pub ops: OpsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Config {
    /// Defaults for a data directory (used by tests and embedding).
    pub fn for_data_dir(data_dir: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::resolve(ServeArgs {
            data_dir: Some(data_dir.as_ref().to_path_buf()),
            ..ServeArgs::default()
        })
    }

    /// Flags/env over file over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let default_store = match args.default_store.or(file.default_store) {
            Some(url) => url,
            None => {
                let lake = absolute(&data_dir.join("lake"))?;
                format!("file://{}", lake.display())
            }
        };
        let allow_store = if args.allow_store.is_empty() {
            file.allow_store.unwrap_or_default()
        } else {
            args.allow_store
        };
        let segment_bytes = args
            .segment_bytes
            .or(file.segment_bytes)
            .unwrap_or(64 << 20);
        let frame_bytes_target = args
            .frame_bytes_target
            .or(file.frame_bytes_target)
            .unwrap_or(16 << 20);
        let config = Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 47470))),
            data_dir,
            default_store,
            allow_store,
            max_lag_ms: args.max_lag_ms.or(file.max_lag_ms).unwrap_or(1000),
            table_flush_bytes: args
                .table_flush_bytes
                .or(file.table_flush_bytes)
                .unwrap_or(128 << 20),
            pending_bytes_low_watermark: args
                .pending_bytes_low_watermark
                .or(file.pending_bytes_low_watermark)
                .unwrap_or(1 << 30),
            pending_bytes_high_watermark: args
                .pending_bytes_high_watermark
                .or(file.pending_bytes_high_watermark)
                .unwrap_or(4 << 30),
            message_bytes_max: args
                .message_bytes_max
                .or(file.message_bytes_max)
                .unwrap_or(1 << 30),
            frame_bytes_target,
            put_idle_timeout_ms: args
                .put_idle_timeout_ms
                .or(file.put_idle_timeout_ms)
                .unwrap_or(60_000),
            allow_memory_store: args.allow_memory_store || file.allow_memory_store.unwrap_or(false),
            open_transaction_timeout_ms: args
                .open_transaction_timeout_ms
                .or(file.open_transaction_timeout_ms)
                .unwrap_or(600_000),
            quarantine_after_failures: args
                .quarantine_after_failures
                .or(file.quarantine_after_failures)
                .unwrap_or(20),
            quarantine_retry_ms: args
                .quarantine_retry_ms
                .or(file.quarantine_retry_ms)
                .unwrap_or(60_000),
            store_check_timeout_ms: args
                .store_check_timeout_ms
                .or(file.store_check_timeout_ms)
                .unwrap_or(10_000),
            wal: WalConfig {
                segment_bytes_target: segment_bytes,
                // A frame holds at most one chunk of a message plus its command.
                frame_bytes_max: frame_bytes_target.saturating_mul(2).max(1 << 20),
                segment_init: args
                    .segment_init
                    .or(file.segment_init)
                    .unwrap_or(SegmentInit::Recycle),
                ..WalConfig::default()
            },
            flush_concurrency: args
                .flush_concurrency
                .or(file.flush_concurrency)
                .unwrap_or_else(|| {
                    2 * std::thread::available_parallelism().map_or(1, |cores| cores.get())
                }),
            memory_budget: args.memory_budget.or(file.memory_budget).unwrap_or(1 << 30),
            ops: OpsConfig {
                http_listen: args.http_listen.or(file.http_listen),
                log_format: args.log_format.or(file.log_format).unwrap_or_default(),
                tls_cert: args.tls_cert.or(file.tls_cert),
                tls_key: args.tls_key.or(file.tls_key),
                tls_client_ca: args.tls_client_ca.or(file.tls_client_ca),
                auth_token_file: args.auth_token_file.or(file.auth_token_file),
                target_file_bytes: args
                    .target_file_bytes
                    .or(file.target_file_bytes)
                    .unwrap_or(128 << 20),
                vacuum_retention_hours: args
                    .vacuum_retention_hours
                    .or(file.vacuum_retention_hours)
                    .unwrap_or(168),
                checkpoint_interval_commits: args
                    .checkpoint_interval_commits
                    .or(file.checkpoint_interval_commits)
                    .unwrap_or(10),
            },
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_string(),
            })
        };
        if self.pending_bytes_low_watermark > self.pending_bytes_high_watermark {
            return invalid(
                "pending_bytes_low_watermark",
                "must not exceed pending_bytes_high_watermark",
            );
        }
        if self.frame_bytes_target == 0 {
            return invalid("frame_bytes_target", "must be positive");
        }
        if self.quarantine_after_failures == 0 {
            return invalid("quarantine_after_failures", "must be at least 1");
        }
        if self.flush_concurrency == 0 {
            return invalid("flush_concurrency", "must be at least 1");
        }
        if self.memory_budget < crate::flush::memory::MEMORY_BUDGET_MIN {
            return invalid("memory_budget", "must be at least 4 MiB");
        }
        if self.ops.tls_cert.is_some() != self.ops.tls_key.is_some() {
            return invalid("tls_cert", "--tls-cert and --tls-key go together");
        }
        if self.ops.tls_client_ca.is_some() && self.ops.tls_cert.is_none() {
            return invalid("tls_client_ca", "needs --tls-cert and --tls-key");
        }
        if self.ops.target_file_bytes < 1 << 20 {
            return invalid("target_file_bytes", "must be at least 1 MiB");
        }
        if self.ops.checkpoint_interval_commits == 0 {
            return invalid("checkpoint_interval_commits", "must be at least 1");
        }
        if self.wal.segment_bytes_target < 4096 {
            return invalid("segment_bytes", "must be at least 4096");
        }
        Ok(())
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|error| ConfigError::Invalid {
        key: "data_dir",
        problem: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("flightlog.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/flightlog\"\nmax_lag_ms = 250\nallow_store = [\"s3://lake/\"]\nsegment_init = \"grow\"\n",
        )
        .expect("write config");
        let config = Config::resolve(ServeArgs {
            config: Some(file),
            max_lag_ms: Some(10),
            ..ServeArgs::default()
        })
        .expect("resolve");
        assert_eq!(config.max_lag_ms, 10, "the flag wins");
        assert_eq!(config.data_dir, PathBuf::from("/srv/flightlog"));
        assert_eq!(config.default_store, "file:///srv/flightlog/lake");
        assert_eq!(config.allow_store, vec!["s3://lake/".to_string()]);
        assert_eq!(config.wal.segment_init, SegmentInit::Grow);
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 47470)));
        assert_eq!(config.put_idle_timeout_ms, 60_000);
    }

    #[test]
    fn ops_flags_have_their_defaults_and_tls_files_go_in_pairs() {
        let config = Config::resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(config.ops.http_listen, None);
        assert_eq!(config.ops.log_format, LogFormat::Text);
        assert_eq!(config.ops.target_file_bytes, 128 << 20);
        assert_eq!(config.ops.vacuum_retention_hours, 168);
        assert_eq!(config.ops.checkpoint_interval_commits, 10);
        let error = Config::resolve(ServeArgs {
            tls_cert: Some(PathBuf::from("cert.pem")),
            ..ServeArgs::default()
        })
        .expect_err("a certificate without its key");
        assert!(error.to_string().contains("tls_cert"), "{error}");
        let error = Config::resolve(ServeArgs {
            tls_client_ca: Some(PathBuf::from("ca.pem")),
            ..ServeArgs::default()
        })
        .expect_err("client CA without TLS");
        assert!(error.to_string().contains("tls_client_ca"), "{error}");
    }

    #[test]
    fn an_unknown_key_or_inverted_watermarks_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "max_lag = 5\n").expect("write config");
        let error = Config::resolve(ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        })
        .expect_err("unknown key");
        assert!(error.to_string().contains("max_lag"), "{error}");
        let error = Config::resolve(ServeArgs {
            pending_bytes_low_watermark: Some(10),
            pending_bytes_high_watermark: Some(5),
            ..ServeArgs::default()
        })
        .expect_err("inverted watermarks");
        assert!(
            error.to_string().contains("pending_bytes_low_watermark"),
            "{error}"
        );
    }
}
