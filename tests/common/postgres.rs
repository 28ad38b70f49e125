//! A real Postgres 15 for a test: `initdb` in a fresh directory owned by the
//! `postgres` user (initdb refuses root, so it runs through `runuser`), the
//! server on a free port on 127.0.0.1 with `wal_level = logical`, stopped
//! (`pg_ctl stop -m immediate`) and removed when dropped. No mock anywhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the Debian packages put Postgres 15.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists (apt-get install postgresql)")
    };
    (id("-u"), id("-g"))
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command
        .args(["-u", "postgres", "--"])
        .arg(Path::new(BIN).join(program));
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Postgres {
    /// Starts a new server; `settings` are extra `-c name=value` pairs.
    pub fn start(settings: &[&str]) -> Postgres {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "Postgres 15 is missing: apt-get install -y postgresql"
        );
        let dir = std::env::temp_dir().join(format!(
            "flightlog-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the Postgres directory");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to postgres");
        let data = dir.join("data");
        let status = as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).expect("create the log");
        let mut command = as_postgres("postgres");
        command
            .arg("-D")
            .arg(&data)
            .args([
                "-c",
                "wal_level=logical",
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("port={port}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "max_wal_senders=10"])
            .args(["-c", "max_replication_slots=10"]);
        for setting in settings {
            command.args(["-c", setting]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let server = Postgres { child, dir, port };
        for _ in 0..600 {
            let ready = Command::new(Path::new(BIN).join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("postgres did not start; log:\n{}", server.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A SQL session with the replicator's session settings (ISO dates,
    /// UTC, exact floats), so text values compare with what it read.
    pub async fn client(&self) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = self.url().parse().expect("a valid URL");
        config.options(flightlog::replicate::types::SESSION_OPTIONS);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
