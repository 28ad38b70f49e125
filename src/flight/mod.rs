//! The Arrow Flight adapter: the only tonic / arrow-flight code. Decodes a
//! `do_put` (descriptor → `Any` → `DataSyncCommand`, then the Arrow stream),
//! hands it to the node, and encodes the `DataSyncResponse` as the
//! `PutResult`'s `app_metadata`. Every other Flight method is `Unimplemented`.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use tokio_util::sync::CancellationToken;

use crate::error::NodeError;
use crate::node::Node;
use crate::proto::sync::DataSyncCommand;
use crate::put::PutItem;
pub use reset::{BodyReset, WatchResets};

pub mod reset;

/// `google.protobuf.Any`, as Seafowl clients wrap the command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The `type_url`s accepted for a `DataSyncCommand`.
pub const COMMAND_TYPE_URLS: [&str; 2] = [
    "DataSyncCommand",
    "type.googleapis.com/clade.sync.DataSyncCommand",
];

/// The Flight action that returns the node's metrics as JSON.
pub const METRICS_ACTION: &str = "metrics";
/// The `metrics` action's body asking for the Prometheus text format.
pub const METRICS_PROMETHEUS_BODY: &[u8] = b"prometheus";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Flight service over a node.
#[derive(Clone)]
pub struct SyncService {
    node: Arc<Node>,
}

impl SyncService {
    pub fn new(node: Arc<Node>) -> SyncService {
        SyncService { node }
    }

    /// The tonic service, with message size limits from the node's config
    /// and its request bodies watched for resets (see [`reset`]).
    pub fn into_server(self) -> WatchResets<FlightServiceServer<SyncService>> {
        let limit = usize::try_from(self.node.config().message_bytes_max.min(1 << 31))
            .unwrap_or(usize::MAX);
        WatchResets(FlightServiceServer::new(self).max_decoding_message_size(limit))
    }
}

/// Serves the node's Flight service on `listener` until `shutdown`
/// completes, then lets in-flight requests finish; plain TCP, no tokens.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_with(node, listener, ServeOptions::default(), shutdown).await
}

/// How the Flight port is protected.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// TLS (and client certificates), see `ops::tls`.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Bearer tokens every call must carry, see `ops::auth`.
    pub tokens: Option<Arc<crate::ops::auth::Tokens>>,
}

/// [`serve`] with TLS and tokens. The one place the tonic server is put
/// together (the binary, tests and benches call it).
pub async fn serve_with(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    // `serve_with_incoming` ignores `Server::tcp_nodelay`: set it on the
    // accepted sockets, or Nagle holds small responses for a delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = SyncService::new(node).into_server();
    match options.tokens {
        Some(tokens) => {
            let check = move |request: Request<()>| tokens.check(request);
            builder
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    server, check,
                ))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            builder
                .add_service(server)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Decodes the command from the first message's descriptor.
pub fn decode_command(descriptor: Option<&FlightDescriptor>) -> Result<DataSyncCommand, NodeError> {
    let invalid =
        |field: &'static str, problem: String| NodeError::InvalidCommand { field, problem };
    let descriptor = descriptor.ok_or_else(|| {
        invalid(
            "flight_descriptor",
            "missing on the first FlightData".into(),
        )
    })?;
    if descriptor.r#type != DescriptorType::Cmd as i32 {
        return Err(invalid(
            "flight_descriptor.type",
            format!(
                "must be CMD ({}), got {}",
                DescriptorType::Cmd as i32,
                descriptor.r#type
            ),
        ));
    }
    let any = Any::decode(descriptor.cmd.as_ref())
        .map_err(|e| invalid("flight_descriptor.cmd", format!("not a protobuf Any: {e}")))?;
    if !COMMAND_TYPE_URLS.contains(&any.type_url.as_str()) {
        return Err(invalid(
            "flight_descriptor.cmd.type_url",
            format!("{:?} is not one of {:?}", any.type_url, COMMAND_TYPE_URLS),
        ));
    }
    DataSyncCommand::decode(any.value.as_slice()).map_err(|e| {
        invalid(
            "flight_descriptor.cmd.value",
            format!("not a valid DataSyncCommand: {e}"),
        )
    })
}

/// tonic refuses one `FlightData` over its decoding limit, which is
/// `message_bytes_max`, with `OutOfRange`: that is the message size limit, and
/// the client gets the same `InvalidArgument` naming it as for a message whose
/// batches add up to too much.
fn stream_error(error: FlightError, limit: u64) -> NodeError {
    match error {
        FlightError::Tonic(status) if status.code() == tonic::Code::OutOfRange => {
            NodeError::MessageTooLarge { limit }
        }
        other => NodeError::Stream(other.to_string()),
    }
}

/// arrow-ipc slices a batch's buffers out of the message body without
/// checking that they fit, and panics on a body cut short; so every buffer
/// the IPC header names is checked against the body first. A header that is
/// not a valid IPC message is left to the decoder, which reports it.
fn check_body_bounds(data: &FlightData) -> Result<(), FlightError> {
    use arrow_ipc::MessageHeader;
    let Ok(message) = arrow_ipc::root_as_message(&data.data_header) else {
        return Ok(());
    };
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => message
            .header_as_dictionary_batch()
            .and_then(|dictionary| dictionary.data()),
        _ => None,
    };
    let Some(buffers) = batch.and_then(|batch| batch.buffers()) else {
        return Ok(());
    };
    let body_len = data.data_body.len() as u64;
    for (index, buffer) in buffers.iter().enumerate() {
        let end = u64::try_from(buffer.offset())
            .ok()
            .zip(u64::try_from(buffer.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length));
        if end.is_none_or(|end| end > body_len) {
            return Err(FlightError::DecodeError(format!(
                "IPC buffer {index} (offset {}, length {}) lies outside the {body_len}-byte message body",
                buffer.offset(),
                buffer.length()
            )));
        }
    }
    Ok(())
}

/// Decodes `do_put`'s Arrow stream (the first message included) into the
/// node's items. `limit` is `message_bytes_max`, named in the error for a
/// message tonic refused as too large.
///
/// arrow-ipc 59 panics on some malformed messages (a buffer slice past the
/// body, unimplemented types) instead of returning an error. That input
/// comes from the network, so the decoding of each message is contained: a
/// panic becomes an `InvalidArgument` `NodeError::Arrow` and ends the stream
/// (the decoder's state is not trusted after it).
pub fn decode_put_stream<S>(
    flight_data: S,
    limit: u64,
) -> impl Stream<Item = Result<PutItem, NodeError>> + Send + 'static
where
    S: Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
{
    // A FlightData with no IPC message (a descriptor-only first message, as
    // a probe may send) carries nothing to decode: skip it rather than let
    // the decoder fail on an empty header.
    let checked = flight_data
        .filter(|item| {
            let empty = matches!(item, Ok(data) if data.data_header.is_empty() && data.data_body.is_empty());
            futures::future::ready(!empty)
        })
        .map(|item| item.and_then(|data| check_body_bounds(&data).map(|()| data)));
    let decoder = std::panic::AssertUnwindSafe(FlightDataDecoder::new(checked));
    decoder
        .catch_unwind()
        .filter_map(move |decoded| async move {
            match decoded {
                Ok(Ok(data)) => match data.payload {
                    DecodedPayload::Schema(schema) => Some(Ok(PutItem::Schema(schema))),
                    DecodedPayload::RecordBatch(batch) => Some(Ok(PutItem::Batch(batch))),
                    DecodedPayload::None => None,
                },
                Ok(Err(error)) => Some(Err(stream_error(error, limit))),
                Err(_panic) => Some(Err(NodeError::Stream(
                    "a FlightData message is malformed (the Arrow IPC decoder refused it)".into(),
                ))),
            }
        })
}

fn unimplemented<T>(method: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{method} is not supported: flightlog only ingests through do_put"
    )))
}

impl SyncService {
    /// The body of `do_put`, under a cancellation token.
    async fn put(
        &self,
        request: Request<Streaming<FlightData>>,
        cancel: CancellationToken,
    ) -> Result<Response<BoxStream<PutResult>>, Status> {
        let grant = request
            .extensions()
            .get::<crate::ops::auth::Grant>()
            .cloned();
        let mut stream = request.into_inner();
        let limit = self.node.config().message_bytes_max;
        let first = stream
            .message()
            .await
            .map_err(|status| match status.code() {
                tonic::Code::OutOfRange => Status::from(NodeError::MessageTooLarge { limit }),
                _ => status,
            })?;
        let first = first.ok_or_else(|| {
            Status::invalid_argument(
                "do_put: empty stream, the first FlightData must carry the command",
            )
        })?;
        let command = decode_command(first.flight_descriptor.as_ref())?;
        if let Some(grant) = &grant {
            let admission = self.node.admission();
            let table = admission.table_id(&command, true)?;
            admission.check_grant(&table, &grant.prefixes)?;
        }
        let flight_data = futures::stream::once(async move { Ok(first) })
            .chain(stream.map(|item| item.map_err(FlightError::from)));
        let items = decode_put_stream(flight_data, limit);
        // The put runs in its own task: if the client resets the stream and
        // tonic drops this future, the put still finishes its cleanup (an
        // abort marker for frames a cut message left in the WAL).
        let node = self.node.clone();
        let response =
            tokio::spawn(async move { node.put(command, Box::pin(items), cancel).await })
                .await
                .map_err(|error| Status::internal(format!("the put task failed: {error}")))??;
        let result = PutResult {
            app_metadata: response.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(result)
        }))))
    }
}

/// The client's deadline from the `grpc-timeout` header (`<digits><unit>`,
/// unit one of `H M S m u n`), if it sent one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let nanos_per_unit: u64 = match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        _ => return None,
    };
    Some(std::time::Duration::from_nanos(
        amount.saturating_mul(nanos_per_unit),
    ))
}

#[tonic::async_trait]
impl FlightService for SyncService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        // A message is kept only if its stream ends normally. The token is
        // cancelled when tonic drops this handler (the client cancelled or
        // reset the call) or when the client's own deadline passes; the put
        // then keeps nothing of the message.
        // A reset seen by the body watcher cancels the same token (tonic
        // would report it as a clean end of the stream).
        let cancel = match request.extensions().get::<BodyReset>() {
            Some(BodyReset(reset)) => reset.clone(),
            None => CancellationToken::new(),
        };
        let _cancel_on_drop = cancel.clone().drop_guard();
        let deadline = grpc_timeout(request.metadata()).map(|timeout| {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                cancel.cancel();
            })
        });
        let started = std::time::Instant::now();
        let result = self.put(request, cancel).await;
        if let Some(timer) = deadline {
            timer.abort();
        }
        let metrics = self.node.put_metrics();
        match &result {
            Ok(_) => {
                metrics.requests.record(tonic::Code::Ok);
                metrics.ack_seconds.observe(started.elapsed());
            }
            Err(status) => metrics.requests.record(status.code()),
        }
        result
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("handshake")
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("list_flights")
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unimplemented("get_flight_info")
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented("poll_flight_info")
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unimplemented("get_schema")
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        unimplemented("do_get")
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("do_exchange")
    }
    /// `metrics`: the node's counters and gauges as one JSON document; with
    /// body `prometheus`, the `/metrics` registry in the OpenMetrics text format.
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        if action.r#type != METRICS_ACTION {
            return Err(Status::invalid_argument(format!(
                "action.type: {:?} is not supported (only {METRICS_ACTION:?})",
                action.r#type
            )));
        }
        let body = if action.body.as_ref() == METRICS_PROMETHEUS_BODY {
            crate::ops::metrics::render(&self.node)
        } else {
            self.node.metrics_json().to_string()
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(result)
        }))))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let action = ActionType {
            r#type: METRICS_ACTION.to_string(),
            description: "counters and gauges of the WAL, pending index and flushes, as JSON"
                .to_string(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(action)
        }))))
    }
}
