//! The Postgres control plane (tokio-postgres): the publication's tables and
//! their columns, the slot's state, the server's position, and the initial
//! copy's cursor reads inside the slot's exported snapshot.

use std::str::FromStr;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::replicate::pgoutput::PgLsn;
use crate::replicate::rows::ColumnInfo;
use crate::replicate::types::SESSION_OPTIONS;
use crate::replicate::ReplicateError;

/// Where and as whom to connect, from `--postgres`.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    config: tokio_postgres::Config,
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<PgTarget, ReplicateError> {
        let usage = |what: &str| ReplicateError::Usage(format!("--postgres: {what}"));
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| usage(&e.to_string()))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => return Err(usage("no host")),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .ok_or_else(|| usage("no user"))?
            .to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        config
            .options(SESSION_OPTIONS)
            .application_name("flightlog-replicate");
        Ok(PgTarget {
            host,
            port,
            user,
            password,
            database,
            config,
        })
    }

    /// A SQL session (its connection task runs on the current runtime).
    pub async fn connect(&self) -> Result<Client, ReplicateError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection ended");
            }
        });
        Ok(client)
    }
}

pub fn pg_error(error: tokio_postgres::Error) -> ReplicateError {
    let message = match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    };
    ReplicateError::Postgres(message)
}

/// `X/Y` (Postgres's text form) as a number.
pub fn parse_lsn(text: &str) -> Result<PgLsn, ReplicateError> {
    let bad = || ReplicateError::Postgres(format!("{text:?} is not an LSN"));
    let (high, low) = text.split_once('/').ok_or_else(bad)?;
    let high = u64::from_str_radix(high, 16).map_err(|_| bad())?;
    let low = u64::from_str_radix(low, 16).map_err(|_| bad())?;
    if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(high << 32 | low)
}

pub fn format_lsn(lsn: PgLsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Double-quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The simple-query rows of `sql`, as text.
pub async fn text_rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, ReplicateError> {
    let messages = client.simple_query(sql).await.map_err(pg_error)?;
    Ok(messages
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A published table and its columns from the catalog.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    pub namespace: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<ColumnInfo>,
}

/// The tables of `publication` (error if it does not exist).
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<CatalogTable>, ReplicateError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg_error)?;
    if exists.is_none() {
        return Err(ReplicateError::Usage(format!(
            "publication {publication:?} does not exist (CREATE PUBLICATION {} FOR TABLE ...)",
            quote_ident(publication)
        )));
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text, attnames::text[] FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(pg_error)?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let namespace: String = row.get(0);
        let name: String = row.get(1);
        // The publication's column list (all columns when it has none).
        let published: Option<Vec<String>> = row.get(2);
        let mut table = catalog_table(client, &namespace, &name).await?;
        if let Some(published) = published {
            table.columns.retain(|c| published.contains(&c.name));
        }
        tables.push(table);
    }
    Ok(tables)
}

async fn catalog_table(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<CatalogTable, ReplicateError> {
    let rows = client
        .query(
            "SELECT c.relreplident::text, a.attname::text, a.atttypid::int8, a.atttypmod, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                         AND a.attnum = ANY(i.indkey) \
                         AND CASE c.relreplident WHEN 'd' THEN i.indisprimary \
                                                 WHEN 'i' THEN i.indisreplident \
                                                 ELSE false END), \
               format_type(a.atttypid, a.atttypmod) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&namespace, &name],
        )
        .await
        .map_err(pg_error)?;
    let mut replica_identity = b'd';
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let identity: String = row.get(0);
        replica_identity = identity.bytes().next().unwrap_or(b'n');
        let oid: i64 = row.get(2);
        columns.push(ColumnInfo {
            name: row.get(1),
            type_oid: u32::try_from(oid).unwrap_or(0),
            type_modifier: row.get(3),
            is_key: row.get(4),
            type_name: row.get(5),
        });
    }
    Ok(CatalogTable {
        namespace: namespace.to_string(),
        name: name.to_string(),
        replica_identity,
        columns,
    })
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush: Option<PgLsn>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub active_pid: Option<String>,
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, ReplicateError> {
    let sql = format!(
        "SELECT plugin::text, database::text, confirmed_flush_lsn::text, wal_status, \
         active_pid::text FROM pg_replication_slots WHERE slot_name = {}",
        quote_literal(slot)
    );
    let rows = text_rows(client, &sql).await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let mut row = row.into_iter();
    let mut next = || row.next().flatten();
    let plugin = next();
    let database = next();
    let confirmed_flush = next().map(|t| parse_lsn(&t)).transpose()?;
    Ok(Some(SlotState {
        plugin,
        database,
        confirmed_flush,
        wal_status: next(),
        active_pid: next(),
    }))
}

pub async fn current_lsn(client: &Client) -> Result<PgLsn, ReplicateError> {
    parse_lsn(&scalar(client, "SELECT pg_current_wal_lsn()::text").await?)
}

/// The server's `server_version_num` (e.g. 150004 for 15.4).
pub async fn server_version(client: &Client) -> Result<u32, ReplicateError> {
    let text = scalar(client, "SHOW server_version_num").await?;
    text.trim()
        .parse()
        .map_err(|_| ReplicateError::Postgres(format!("server_version_num is {text:?}")))
}

/// The first column of the first row `sql` returns.
async fn scalar(client: &Client, sql: &str) -> Result<String, ReplicateError> {
    let rows = text_rows(client, sql).await?;
    rows.into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten())
        .ok_or_else(|| ReplicateError::Postgres(format!("{sql} returned nothing")))
}

/// The server's `wal_level` must be `logical`.
pub async fn check_wal_level(client: &Client) -> Result<(), ReplicateError> {
    let rows = text_rows(client, "SHOW wal_level").await?;
    let level = rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten())
        .unwrap_or_default();
    if level != "logical" {
        return Err(ReplicateError::Usage(format!(
            "the server's wal_level is {level:?}; logical replication needs wal_level = logical \
             (postgresql.conf, then restart the server)"
        )));
    }
    Ok(())
}
