//! The replicator's side of the sync protocol: `do_put` calls to a node, as
//! any client makes them (the node's internals are not used).
//!
//! `accepted = false` (node overloaded) is retried here with a capped
//! exponential backoff; an `InvalidArgument` is the replicator's bug or bad
//! data and stops it; anything else (connection lost, node restarting) is
//! [`ReplicateError::Node`], after which the caller reconnects and resumes
//! from what the node acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use prost::Message;

use crate::flight::{Any, COMMAND_TYPE_URLS};
use crate::proto::sync::{ColumnDescriptor, DataSyncCommand, DataSyncResponse};
use crate::replicate::ReplicateError;

/// The one backoff policy: 50 ms doubling to 2 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)).min(2_000))
}

/// A connection to the node for one origin.
pub struct NodeClient {
    url: String,
    origin: String,
    client: FlightClient,
    /// Connections made so far (1 while the first one lasts).
    connections: Arc<AtomicU64>,
}

impl NodeClient {
    /// Connects (one HTTP/2 connection). tonic would reconnect silently
    /// after a break, but a node that restarted meanwhile has dropped the
    /// origin's open transaction, and its `first = true` may have gone to
    /// another client of the same origin; so every put fails with
    /// [`ReplicateError::Node`] once a second connection was made, and the
    /// caller starts a new session.
    pub async fn connect(url: &str, origin: &str) -> Result<NodeClient, ReplicateError> {
        let connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&connections);
        let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
            let counter = Arc::clone(&counter);
            async move {
                let host = uri.host().unwrap_or("127.0.0.1").to_string();
                let port = uri.port_u16().unwrap_or(80);
                let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| ReplicateError::Usage(format!("--node {url}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(connector)
            .await
            .map_err(|e| ReplicateError::Node(format!("cannot connect to {url}: {e}")))?;
        Ok(NodeClient {
            url: url.to_string(),
            origin: origin.to_string(),
            client: FlightClient::new(channel),
            connections,
        })
    }

    fn check_connection(&self) -> Result<(), ReplicateError> {
        if self.connections.load(Ordering::SeqCst) > 1 {
            return Err(ReplicateError::Node(
                "the connection to the node was made again (the node may have restarted)".into(),
            ));
        }
        Ok(())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One `do_put` of `batches` for the table at `path`; `sequence` closes
    /// the origin's transaction. Retries while the node answers
    /// `accepted = false`.
    pub async fn put(
        &mut self,
        path: &str,
        descriptors: &[ColumnDescriptor],
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        sequence: Option<u64>,
    ) -> Result<DataSyncResponse, ReplicateError> {
        let command = DataSyncCommand {
            path: path.to_string(),
            store: None,
            column_descriptors: descriptors.to_vec(),
            origin: self.origin.clone(),
            sequence_number: sequence,
            format: 0,
        };
        let cmd = Any {
            type_url: COMMAND_TYPE_URLS[0].to_string(),
            value: command.encode_to_vec(),
        }
        .encode_to_vec();
        let mut attempt = 0;
        loop {
            let stream = FlightDataEncoderBuilder::new()
                .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.clone())))
                .with_schema(schema.clone())
                .build(futures::stream::iter(batches.clone().into_iter().map(Ok)));
            let results: Vec<_> = self
                .client
                .do_put(stream)
                .await
                .map_err(|e| put_error(path, e))?
                .try_collect()
                .await
                .map_err(|e| put_error(path, e))?;
            let [result] = results.as_slice() else {
                return Err(ReplicateError::Node(format!(
                    "the node answered a put with {} results, not one",
                    results.len()
                )));
            };
            // Checked after the answer: the put may have been the one that
            // reconnected, to a node that lost what this session sent.
            self.check_connection()?;
            let response = DataSyncResponse::decode(result.app_metadata.as_ref()).map_err(|e| {
                ReplicateError::Node(format!("the node's answer is not a DataSyncResponse: {e}"))
            })?;
            if response.accepted {
                return Ok(response);
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// A probe: no rows, no sequence; the origin's current numbers.
    pub async fn probe(&mut self, path: &str) -> Result<DataSyncResponse, ReplicateError> {
        self.put(path, &[], Arc::new(Schema::empty()), Vec::new(), None)
            .await
    }

    /// A transaction without rows at `sequence` (closes an open one).
    pub async fn close(
        &mut self,
        path: &str,
        sequence: u64,
    ) -> Result<DataSyncResponse, ReplicateError> {
        self.put(
            path,
            &[],
            Arc::new(Schema::empty()),
            Vec::new(),
            Some(sequence),
        )
        .await
    }
}

fn put_error(path: &str, error: FlightError) -> ReplicateError {
    match error {
        FlightError::Tonic(status) if status.code() == tonic::Code::InvalidArgument => {
            ReplicateError::Refused {
                path: path.to_string(),
                message: status.message().to_string(),
            }
        }
        other => ReplicateError::Node(format!("put to {path}: {other}")),
    }
}
